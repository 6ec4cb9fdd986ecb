"""Arithmetic precision of the networks: one place that decides it and applies it.

``auto`` picks the fastest precision that keeps the pixels within the bound ``tests/test_precision.py``
proves: bf16 autocast on CPUs with native bf16 instructions (AVX512-BF16 or AMX; measured here 1.4x on
GFPGAN and 2.4x on Wav2Lip), fp16 autocast on CUDA, fp32 elsewhere (emulated bf16 would be slower than fp32).
"""
from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 instructions (Linux /proc/cpuinfo; elsewhere: no)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision actually used on ``device``: ``auto`` resolved (bf16 or fp32 on CPU, fp16 on
    CUDA); fp16 on a CPU is an error."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "fp16"
        return "bf16" if kind == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and kind == "cpu":
        raise ValueError("precision fp16: CPUs have no fast fp16 autocast; use bf16, or auto")
    return precision


def autocast(device: torch.device | str, precision: str):
    """The autocast context for ``precision`` on ``device`` (disabled for fp32)."""
    kind = torch.device(device).type
    used = resolve_precision(precision, device)
    if used == "fp32":
        return torch.autocast(kind, enabled=False)
    return torch.autocast(kind, dtype=torch.bfloat16 if used == "bf16" else torch.float16)
