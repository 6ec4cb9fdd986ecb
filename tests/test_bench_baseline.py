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
