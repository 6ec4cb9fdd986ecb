"""Reading published checkpoints safely and loading them strictly into our modules."""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from core.errors import InputError


class CheckpointError(InputError):
    """A weight file that cannot be used: not a tensor file, or keys that do not fit the network."""


def read_checkpoint(path: str | Path) -> Mapping:
    """Load a checkpoint file with ``weights_only=True`` (no code in the file is ever run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises turning weights_only off, which must never be done for a file that
        # carries code: name what was refused, or say it is not a checkpoint at all
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(f"{path}: not a plain tensor checkpoint: it carries Python code "
                                  f"({refused.group(1)}), which is never run") from None
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise CheckpointError(f"{path}: not a plain tensor checkpoint: it is a pickle of Python objects, "
                                  f"which are never loaded") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable content)") from None
    except Exception as exc:  # torch raises many kinds (KeyError, RuntimeError, EOFError...) on junk
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def pick_state_dict(ckpt: Mapping, path: str | Path, nested: tuple[str, ...] = ()) -> dict:
    """Return the state dict inside ``ckpt``: the first of ``nested`` keys present, else ``ckpt`` itself."""
    for key in nested:
        if key in ckpt:
            sd = ckpt[key]
            break
    else:
        sd = ckpt
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        held = ", ".join(map(str, list(ckpt)[:8])) or "nothing"
        raise CheckpointError(f"{path}: not this network's layout: no state dict of tensors found (looked for "
                              f"{list(nested) or 'a bare dict'}; the file holds: {held})")
    return dict(sd)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """Drop a DataParallel-style prefix from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that names the missing and unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong_shape:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if wrong_shape:
            parts.append(
                f"{len(wrong_shape)} keys with wrong shapes: "
                + few([f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in wrong_shape])
            )
        raise CheckpointError(f"{path}: does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)
    return module


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU; otherwise the named device."""
    if device is None or str(device) == "auto":
        return default_device()
    return torch.device(device)
