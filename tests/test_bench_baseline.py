"""The seed baseline's stand-in detectors (bench/baseline.py): random weights in the official layouts
find nothing, and the released GFPGAN helper aligns on the true faces handed over after each call."""
from __future__ import annotations

import os

import cv2
import numpy as np

from tests.conftest import astronaut_bgr


def test_seed_detectors_run_and_hand_over_the_true_faces(models_dir, tmp_path, monkeypatch):
    from bench.baseline import as_retinaface_rows, load_seed_models
    from models.face_detection import CenterFaceDetector
    from models.s3fd import s3fd_detect
    from tests.checkpoints import make_gfpgan_checkpoint

    seed_models = tmp_path / "models"
    seed_models.mkdir()
    os.symlink(models_dir / "wav2lip_gan.pth", seed_models / "wav2lip_gan.pth")
    make_gfpgan_checkpoint(seed_models / "GFPGANv1.3.pth", seed=3)
    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(seed_models))
    models = load_seed_models()

    frame = cv2.resize(astronaut_bgr(), (320, 320))
    assert [len(d) for d in s3fd_detect(models.s3fd, [frame, frame], "cpu")] == [0, 0]  # background everywhere

    truth = CenterFaceDetector(max_side=1 << 16)(frame)
    assert len(truth) == 1
    helper = models.restorer.face_helper
    assert helper.face_det is models.retinaface and helper.face_parse is models.parsenet and helper.use_parse
    models.retinaface.truth = as_retinaface_rows(truth)
    helper.clean_all()
    helper.read_image(frame)
    assert helper.get_face_landmarks_5(only_center_face=True, eye_dist_threshold=5) == 1
    np.testing.assert_allclose(helper.all_landmarks_5[0], truth[0].landmarks, atol=1e-4)
    np.testing.assert_allclose(helper.det_faces[:4], truth[0].box, atol=1e-4)  # the centre face alone


def _reference_smoothing(boxes: np.ndarray, window: int) -> np.ndarray:
    """inference.py's get_smoothened_boxes as written there: a loop over a list, in place."""
    out = boxes.copy()
    for i in range(len(out)):
        if i + window > len(out):
            win = out[len(out) - window:] if len(out) >= window else out[:]
        else:
            win = out[i:i + window]
        out[i] = np.mean(win, axis=0)
    return out


def test_seed_box_smoothing_is_the_references():
    from bench.baseline import smooth_boxes

    rng = np.random.default_rng(3)
    for n in (3, 5, 20):  # shorter than, equal to and longer than the window
        boxes = rng.integers(0, 500, (n, 4))
        before = boxes.copy()
        out = smooth_boxes(boxes, 5)
        np.testing.assert_array_equal(boxes, before)  # the input is not modified
        np.testing.assert_array_equal(out, _reference_smoothing(boxes, 5))
        assert out.dtype == boxes.dtype
    # by hand: box 0 is the mean of boxes 0..4 (truncated); box 18 uses the final window 15..19, in which
    # boxes 15..17 already hold their smoothed values
    np.testing.assert_array_equal(out[0], np.trunc(boxes[0:5].mean(axis=0)))
    np.testing.assert_array_equal(out[18], np.trunc(np.concatenate([out[15:18], boxes[18:20]]).mean(axis=0)))


def test_bench_flow_child_passes_only_parameters_the_flow_has(monkeypatch, capsys):
    """Benchmarks 1 and 4 run ``python -m bench.orchestration flow``: its options must reach the flow under
    the flow's own parameter names (a renamed parameter once failed both benchmarks)."""
    import inspect
    import json
    import sys

    import bench.orchestration as orchestration
    import flows.lipsync_hq as flow_module

    real = flow_module.lipsync_hq
    received = {}

    class Flow:
        fn = staticmethod(real.fn)

        def __call__(self, **kwargs):
            inspect.signature(real.fn).bind(**kwargs)  # TypeError on a parameter the flow does not have
            received.update(kwargs)

    monkeypatch.setattr(flow_module, "lipsync_hq", Flow())
    monkeypatch.setattr(orchestration, "stage_walls", lambda work: {})
    monkeypatch.setattr(sys, "argv", ["bench.orchestration", "flow", "--audio", "a.wav", "--video", "v.mp4",
                                      "--out", "o.mp4", "--dask-workers", "0", "--upscale", "2",
                                      "--gfpgan", "1.3", "--chunk-frames", "7"])
    orchestration.main()
    assert received["gfpgan"] == "1.3" and received["upscale"] == 2 and received["chunk_frames"] == 7
    assert received["dask_workers"] == 0 and received["precision"] == "bf16"
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("BENCH_RESULT ") and json.loads(line[len("BENCH_RESULT "):])["dask_workers"] == 0
