"""Dask preload for wav2lip-hq workers: ``dask worker ... --preload deployments/dask_preload.py``.

Makes the project importable, pins torch threads to the worker's share, and loads the default models
once per worker process so the first chunk does not pay for it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def dask_setup(worker) -> None:
    import torch

    threads = os.environ.get("WAV2LIP_HQ_TORCH_THREADS") or str(max(1, worker.state.nthreads))
    os.environ["WAV2LIP_HQ_TORCH_THREADS"] = threads
    torch.set_num_threads(int(threads))
    if hasattr(worker, "address") and os.environ.get("WAV2LIP_HQ_PRELOAD_MODELS", "1") == "1":
        from models.loading import get_restorer
        from models.weights import MissingWeightsError

        try:  # the default options' engine and precision: what a job's chunks will ask for
            get_restorer("GFPGANv1.4.pth")
        except MissingWeightsError as exc:  # the task will report it with the fetch command
            print(f"wav2lip-hq preload: {exc}", file=sys.stderr)
