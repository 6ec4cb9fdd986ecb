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


def test_bench_flow_child_runs_the_flow(models_dir, tiny, tmp_path):
    """Benchmarks 1 and 4 time ``python -m bench.orchestration flow``, the flow as users run it: the child
    must run it with the options given and read back its stages (a renamed flow parameter and a changed
    helper signature once failed both benchmarks after their first, hour-long half)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-m", "bench.orchestration", "flow", "--audio", tiny["audio"],
                           "--video", tiny["video"], "--out", str(out), "--dask-workers", "0", "--upscale", "2",
                           "--gfpgan", "1.4", "--chunk-frames", "4", "--precision", "fp32"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PREFECT_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")][-1]
    res = json.loads(line[len("BENCH_RESULT "):])
    assert res["frames"] == 8 and res["faces"] == 8 and res["chunks"] == 2 and res["size"] == [256, 256]
    assert {"lipsync", "enhance_chunk", "final_mux"} <= set(res["stages"]) and res["total"] > 0
    assert out.is_file()
