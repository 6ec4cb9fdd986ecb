"""Batch sizes per device, and batched network calls that survive running out of device memory by
halving the batch."""
from __future__ import annotations

from collections.abc import Callable

import torch

# items per network call when the user sets none. CPU: measured fastest here (README: Wav2Lip 16 frames,
# 26 vs 32 ms/frame at 32; GFPGAN one face, 3.64 vs 4.31 s/face at 4 and half the memory). CUDA: large
# enough to keep a GPU's cores busy, split on out-of-memory below
DEFAULT_BATCH = {"wav2lip": {"cpu": 16, "cuda": 128}, "gfpgan": {"cpu": 1, "cuda": 8}}


def default_batch(model: str, device: torch.device | str) -> int:
    """Items per ``model`` call on ``device`` when the user sets none."""
    return DEFAULT_BATCH[model]["cuda" if torch.device(device).type == "cuda" else "cpu"]


def split_on_oom(fn: Callable[..., torch.Tensor], *batch: torch.Tensor) -> torch.Tensor:
    """``fn(*batch)``; on CUDA out-of-memory, the same on each half of the batch (recursively).

    A single item that still does not fit raises: that is a real limit, not a transient one.
    """
    try:
        return fn(*batch)
    except torch.OutOfMemoryError:
        n = batch[0].shape[0]
        if n <= 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = n // 2
        return torch.cat([split_on_oom(fn, *(b[:half] for b in batch)),
                          split_on_oom(fn, *(b[half:] for b in batch))])
