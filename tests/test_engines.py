"""GFPGAN and Wav2Lip on OpenVINO (models/engines.py): fidelity to torch fp32, determinism, the on-disk
IR cache, the fallback to torch, and the engine in the lipsync and enhance_chunk cache keys.

The fidelity set-up is tests/test_precision.py's: GFPGANv1Clean with its own seeded initialisation on a
real aligned face (the unit-variance test checkpoints are chaotic, see there). Measured here: OpenVINO
2026.4 bf16 (convolutions in bf16, the rest fp32) max 2 levels, 100% within 2, mean ~0.32; fp32 max 1.
Without the fp32 marks the bf16 graph was at max 5 and 93.8% within 2: the bound below catches that.
Wav2Lip (the test checkpoint's weights, real face crops, as in test_precision.py): bf16 max 1 level.
"""
from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from tests.test_precision import _levels, face  # noqa: F401 -- the real-face fixture

requires_openvino = pytest.mark.skipif(
    not __import__("models.engines", fromlist=["x"]).openvino_available(),
    reason="openvino is a dependency (pyproject.toml): `make setup` installs it")


@pytest.fixture(scope="module")
def seeded():
    from models.restorer import build_gfpgan

    torch.manual_seed(0)
    return build_gfpgan().eval()


@pytest.fixture(scope="module")
def aligned(face):  # noqa: F811 -- the imported fixture
    from models.restorer import align_face

    frame, f = face
    return align_face(frame, f.landmarks)[0]


@pytest.fixture(scope="module")
def seeded_ir(seeded, tmp_path_factory):
    from models.engines import convert_gfpgan

    return convert_gfpgan(seeded, tmp_path_factory.mktemp("ir") / "gfpgan.xml")


@requires_openvino
@pytest.mark.parametrize("precision, max_levels", [("bf16", 4), ("fp32", 1)])
def test_openvino_within_the_bound_of_torch_fp32(seeded, seeded_ir, aligned, precision, max_levels):
    from models.engines import compile_ir
    from models.restorer import restore_faces

    ref = restore_faces(seeded, [aligned], "cpu", precision="fp32")[0]
    saturated = np.mean((ref == 0) | (ref == 255))
    assert saturated < 0.5, f"{saturated:.0%} of the fp32 output saturated: the comparison would say little"
    engine = compile_ir(seeded_ir, precision, torch.get_num_threads())
    out = restore_faces(engine, [aligned], "cpu")
    d = _levels(ref, out[0])
    within2 = np.mean(d <= 2)
    assert within2 >= 0.999, f"only {within2:.4%} of pixels within 2/255 (max {d.max()}, mean {d.mean():.3f})"
    assert d.mean() < 0.5, f"mean difference {d.mean():.3f}/255"
    assert d.max() <= max_levels, f"max difference {d.max()}/255"
    # deterministic: the same face again, and within a batch of two, gives the same pixels
    again = restore_faces(engine, [aligned, aligned], "cpu")
    assert np.array_equal(out[0], again[0]) and np.array_equal(out[0], again[1])


@requires_openvino
def test_the_ir_is_converted_once_per_weights_file(models_dir, monkeypatch):
    import models.engines as engines
    from models.loading import get_restorer

    engines.clear_cache()
    net, dev = get_restorer("1.4", "cpu", "openvino", "bf16")
    assert isinstance(net, engines.OpenVINOGFPGAN) and net.precision == "bf16" and dev.type == "cpu"
    assert get_restorer("1.4", "cpu", "auto", "auto")[0] is net  # auto: the same engine, once per process
    cached = sorted(p.suffix for p in (models_dir / "openvino").glob("gfpgan-*-ir*"))
    assert cached == [".bin", ".xml"], cached
    # a new process (the cache forgotten) compiles the IR on disk without converting again
    engines.clear_cache()
    monkeypatch.setitem(engines.CONVERT, "gfpgan", lambda *a, **k: pytest.fail("converted again"))
    again = get_restorer("1.4", "cpu", "openvino", "fp32")[0]
    assert isinstance(again, engines.OpenVINOGFPGAN) and again.precision == "fp32"
    from models.restorer import restore_faces

    grey = np.full((512, 512, 3), 128, np.uint8)
    assert restore_faces(again, [grey], dev)[0].shape == (512, 512, 3)


@pytest.fixture(scope="module")
def wav2lip_inputs(face):  # noqa: F811 -- the imported fixture
    """test_precision.py's Wav2Lip set-up: real face crops (4), loud-ish mel windows, a batch of 4."""
    import cv2

    from tasks.lipsync import prepare_faces

    frame, f = face
    x1, y1, x2, y2 = (int(v) for v in f.box)
    crop = frame[y1:min(frame.shape[0], y2 + 10), x1:x2]
    faces = prepare_faces([crop, cv2.flip(crop, 1), cv2.GaussianBlur(crop, (5, 5), 0), crop[::-1].copy()])
    mel = torch.rand(len(faces), 1, 80, 16, generator=torch.Generator().manual_seed(0)) * 8 - 4
    return mel, faces


def _wav2lip_pixels(t: torch.Tensor) -> np.ndarray:
    return (t.float().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)  # as tasks.lipsync does


@requires_openvino
@pytest.mark.parametrize("precision, max_levels", [("bf16", 2), ("fp32", 1)])
def test_openvino_wav2lip_within_the_bound_of_torch_fp32(models_dir, wav2lip_inputs, precision, max_levels):
    """The test checkpoint through the users' path (get_wav2lip), against its torch module in fp32."""
    import models.engines as engines
    from models.loading import get_model, get_wav2lip

    mel, faces = wav2lip_inputs
    torch_net = get_model("wav2lip", "wav2lip_gan.pth", "cpu")[0]
    with torch.inference_mode():
        ref = _wav2lip_pixels(torch_net(mel, faces))
    engines.clear_cache()
    net, _ = get_wav2lip("wav2lip_gan.pth", "cpu", "openvino", precision)
    assert isinstance(net, engines.OpenVINOWav2Lip) and net.precision == precision
    out = _wav2lip_pixels(net(mel, faces))
    assert out.shape == ref.shape == (4, 96, 96, 3)
    d = _levels(ref, out)
    assert d.max() <= max_levels, f"max difference {d.max()}/255"
    assert d.mean() < 0.3, f"mean difference {d.mean():.3f}/255"
    # any batch size (the IR's batch is free), and deterministic: one face alone gives the same pixels
    one = _wav2lip_pixels(net(mel[2:3], faces[2:3]))
    assert np.array_equal(one[0], out[2])


@requires_openvino
def test_the_wav2lip_ir_is_converted_once_per_weights_file(models_dir, monkeypatch):
    import models.engines as engines
    from models.loading import get_wav2lip
    from models.weights import sha256_file

    engines.clear_cache()
    net, _ = get_wav2lip("wav2lip_gan.pth", "cpu", "auto", "bf16")
    assert isinstance(net, engines.OpenVINOWav2Lip)
    digest = sha256_file(models_dir / "wav2lip_gan.pth")  # other tests' own checkpoints are cached beside it
    cached = sorted(p.suffix for p in (models_dir / "openvino").glob(f"wav2lip-{digest[:16]}-*"))
    assert cached == [".bin", ".xml"], cached
    engines.clear_cache()
    monkeypatch.setitem(engines.CONVERT, "wav2lip", lambda *a, **k: pytest.fail("converted again"))
    again = get_wav2lip("wav2lip_gan.pth", "cpu", "openvino", "fp32")[0]
    assert again.precision == "fp32"
    assert again(torch.zeros(3, 1, 80, 16), torch.zeros(3, 6, 96, 96)).shape == (3, 3, 96, 96)


@pytest.fixture
def without_openvino(monkeypatch):
    """``import openvino`` fails, as on a machine without the package."""
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_auto_falls_back_to_torch_without_openvino(without_openvino, models_dir):
    from models.engines import openvino_available, resolve_engine
    from models.loading import get_restorer

    assert not openvino_available()
    assert resolve_engine("auto", "cpu") == "torch"
    net, _ = get_restorer("1.4", "cpu", "auto", "bf16")
    assert isinstance(net, torch.nn.Module)
    with pytest.raises(ValueError, match="openvino and onnx packages are not installed"):
        resolve_engine("openvino", "cpu")  # asked for by name: an error, never silently torch


def test_engine_follows_the_device(monkeypatch):
    import models.engines as engines

    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    assert engines.resolve_engine("auto", "cpu") == "openvino"
    assert engines.resolve_engine("auto", "cuda") == "torch"
    assert engines.resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="runs on the CPU"):
        engines.resolve_engine("openvino", "cuda")
    with pytest.raises(ValueError, match="engine must be one of"):
        engines.resolve_engine("tensorrt", "cpu")


def test_engine_enters_the_cache_key(models_dir, monkeypatch):
    """Chunks restored by OpenVINO are not served to a run that would use torch, and vice versa."""
    import models.engines as engines
    from core.options import RunOptions
    from core.products import Chunk
    from tasks.enhance_chunk import STAGE

    chunk = Chunk(key="k" * 64, path="c.mkv", index=0, start=0, n_frames=1)
    opts = RunOptions(device="cpu")
    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    with_ov = STAGE.key_inputs(chunk, opts)
    key_ov = STAGE.key(chunk=chunk, opts=opts)
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    without = STAGE.key_inputs(chunk, opts)
    assert with_ov["engine"] == "openvino" and without["engine"] == "torch"
    assert key_ov != STAGE.key(chunk=chunk, opts=opts)
    # auto and the engine it resolves to are the same computation: the same key
    assert STAGE.key(chunk=chunk, opts=opts) == STAGE.key(chunk=chunk, opts=RunOptions(device="cpu", engine="torch"))


def test_engine_enters_the_lipsync_key(models_dir, monkeypatch):
    """Frames lip-synced by OpenVINO are not served to a run that would use torch, and vice versa."""
    import models.engines as engines
    from core.options import RunOptions
    from core.products import FaceDetections, Job
    from tasks.lipsync import STAGE

    job = Job.model_construct(audio_sha256="a" * 64, video_sha256="v" * 64)
    dets = FaceDetections.model_construct(key="d" * 32)
    opts = RunOptions(device="cpu")
    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    key_ov = STAGE.key(job=job, detections=dets, opts=opts)
    assert STAGE.key_inputs(job, dets, opts)["engine"] == "openvino"
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert STAGE.key_inputs(job, dets, opts)["engine"] == "torch"
    assert key_ov != STAGE.key(job=job, detections=dets, opts=opts)
    assert STAGE.key(job=job, detections=dets, opts=opts) == STAGE.key(
        job=job, detections=dets, opts=RunOptions(device="cpu", engine="torch"))


def test_an_engine_the_machine_cannot_run_is_refused_up_front(monkeypatch):
    import models.engines as engines
    from core.errors import InputError
    from core.options import RunOptions
    from tasks.probe import check_device

    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    with pytest.raises(InputError, match="openvino and onnx packages are not installed"):
        check_device(RunOptions(device="cpu", engine="openvino"))
    check_device(RunOptions(device="cpu", engine="auto"))
