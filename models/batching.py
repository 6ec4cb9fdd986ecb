"""Batched network calls that survive running out of device memory by halving the batch."""
from __future__ import annotations

from collections.abc import Callable

import torch


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
