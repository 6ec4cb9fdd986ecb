"""Models loaded once per process, keyed by (weights SHA-256, device)."""
from __future__ import annotations

import functools
import os
import threading

import torch

from models.checkpoint import resolve_device
from models.weights import require, sha256_file


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_cached(kind: str, path: str, digest: str, device: str) -> torch.nn.Module:
    if kind == "wav2lip":
        from models.wav2lip import load_wav2lip

        return load_wav2lip(path, device)
    if kind == "gfpgan":
        from models.restorer import load_gfpgan

        return load_gfpgan(path, device)
    if kind == "s3fd":
        from models.s3fd import load_s3fd

        return load_s3fd(path, device)
    if kind == "syncnet":
        from models.syncnet import load_syncnet

        return load_syncnet(path, device)
    raise ValueError(f"unknown model kind {kind!r}")


def _load(kind: str, path: str, digest: str, device: str) -> torch.nn.Module:
    with _LOCK:  # threads of one worker must not load the same model twice
        return _load_cached(kind, path, digest, device)


def _pin_threads() -> None:
    """Dask workers sharing a machine get their share of cores (``WAV2LIP_HQ_TORCH_THREADS``)."""
    threads = os.environ.get("WAV2LIP_HQ_TORCH_THREADS")
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def get_model(kind: str, weight_name: str, device: str | torch.device | None = None
              ) -> tuple[torch.nn.Module, torch.device]:
    """(model, device) for an official weight file in the models directory (cached per content)."""
    _pin_threads()
    path = require(weight_name)
    dev = resolve_device(device)
    return _load(kind, str(path), sha256_file(path), str(dev)), dev
