"""Models loaded once per process, keyed by (weights SHA-256, device)."""
from __future__ import annotations

import functools
import os
import threading

import cv2
import torch

from models.checkpoint import resolve_device
from models.weights import checkpoint_file, sha256_file


_LOCK = threading.Lock()


def load_network(kind: str, path: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """A new torch module of ``kind`` with the checkpoint at ``path`` (strict keys), not cached."""
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


@functools.lru_cache(maxsize=4)
def _load_cached(kind: str, path: str, digest: str, device: str) -> torch.nn.Module:
    return load_network(kind, path, device)


def _load(kind: str, path: str, digest: str, device: str) -> torch.nn.Module:
    with _LOCK:  # threads of one worker must not load the same model twice
        return _load_cached(kind, path, digest, device)


def pin_threads() -> None:
    """Dask workers sharing a machine get their share of cores (``WAV2LIP_HQ_TORCH_THREADS``): torch's
    threads, and OpenCV's for the paste-back (its own pool would take every core in every worker)."""
    threads = os.environ.get("WAV2LIP_HQ_TORCH_THREADS")
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    if threads and cv2.getNumThreads() != int(threads):
        cv2.setNumThreads(int(threads))


def get_model(kind: str, weights: str, device: str | torch.device | None = None
              ) -> tuple[torch.nn.Module, torch.device]:
    """(model, device) for a checkpoint option's value (:func:`models.weights.checkpoint_file`: an
    official name, a path or a URL), loaded once per process per content and device."""
    pin_threads()
    path = checkpoint_file(weights)
    dev = resolve_device(device)
    return _load(kind, str(path), sha256_file(path), str(dev)), dev


def get_network(kind: str, weights: str, option: str, device: str | torch.device | None = None,
                engine: str = "auto", precision: str = "auto"):
    """(model, device) for Wav2Lip's or GFPGAN's checkpoint option (``--checkpoint``, ``--gfpgan``) on the
    engine ``engine`` resolves to (:func:`models.engines.resolve_engine`): the torch module, or an
    OpenVINO model compiled at the resolved ``precision`` for this process's thread count (its IR
    converted once per weights file, in ``models_dir()/openvino``). Either is called the same way."""
    from models.engines import openvino_network, resolve_engine
    from models.precision import resolve_precision
    from models.weights import models_dir

    pin_threads()
    dev = resolve_device(device)
    if resolve_engine(engine, dev) == "torch":
        return get_model(kind, weights, dev)
    path = checkpoint_file(weights, option)
    return openvino_network(kind, path, sha256_file(path), resolve_precision(precision, dev),
                            models_dir() / "openvino"), dev


def get_restorer(weights: str, device: str | torch.device | None = None, engine: str = "auto",
                 precision: str = "auto"):
    """(GFPGAN, device) for ``--gfpgan``'s value: :func:`get_network`; what
    :func:`models.restorer.restore_faces` takes."""
    return get_network("gfpgan", weights, "--gfpgan", device, engine, precision)


def get_wav2lip(weights: str, device: str | torch.device | None = None, engine: str = "auto",
                precision: str = "auto"):
    """(Wav2Lip, device) for ``--checkpoint``'s value: :func:`get_network`."""
    return get_network("wav2lip", weights, "--checkpoint", device, engine, precision)


def network_key(weights: str, option: str, device: str | torch.device | None = None,
                engine: str = "auto", precision: str = "auto") -> dict:
    """What a stage's pixels take from the network :func:`get_network` would give it: the weights'
    content, the device type, and the precision and engine actually used (engines differ within the
    precision bound, so an ``auto`` run without OpenVINO does not reuse output made with it)."""
    from models.engines import resolve_engine
    from models.precision import resolve_precision

    dev = resolve_device(device)
    return {"weights": sha256_file(checkpoint_file(weights, option)), "device": dev.type,
            "precision": resolve_precision(precision, dev), "engine": resolve_engine(engine, dev)}


def check_layout(kind: str, weights: str, option: str) -> None:
    """A user's own checkpoint loads into the network (strict keys); the error names the option and the
    missing and unexpected keys. Official files are checked by their SHA-256 instead."""
    from models.checkpoint import CheckpointError
    from models.weights import is_official

    if is_official(weights):
        return
    try:
        load_network(kind, checkpoint_file(weights, option))
    except CheckpointError as exc:
        raise CheckpointError(f"{option}: {exc}") from None
