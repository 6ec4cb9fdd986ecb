"""Tests for models/face_detection.py: CenterFace detection and decoding, the main-face choice of the
S3FD cross-check."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.media import iter_frames, probe_video
from models.face_detection import (
    CenterFaceDetector,
    Face,
    decode_centerface,
    main_face,
    pad_box,
)
from tests.media_fixtures import astronaut_bgr, centerface, media_file, requires_media  # noqa: F401


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _assert_plausible_face(face: Face, frame_shape) -> None:
    h, w = frame_shape[:2]
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    lm = face.landmarks
    assert lm.shape == (5, 2)
    assert np.all((lm[:, 0] >= x1) & (lm[:, 0] <= x2) & (lm[:, 1] >= y1) & (lm[:, 1] <= y2)), (face.box, lm)
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = lm
    assert lex < rex and lmx < rmx            # image-left eye / mouth corner first
    assert ley < ny and rey < ny              # eyes above the nose
    assert ny < lmy and ny < rmy              # nose above the mouth corners
    assert lex < nx < rex                     # nose between the eyes (frontal face)


# ------------------------------------------------------------------------------------ detection
@pytest.fixture(scope="module")
def astronaut():
    return astronaut_bgr()


def test_astronaut_one_face(centerface, astronaut):
    faces = centerface(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.box.dtype == np.float32 and f.landmarks.dtype == np.float32
    assert 0.5 < f.score <= 1.0
    _assert_plausible_face(f, astronaut.shape)
    # her face is in the upper middle of the 512x512 photo: about 90 px wide and 120 px high
    # (box read off the photo: eyebrows to chin, ear to cheek)
    x1, y1, x2, y2 = f.box
    assert _iou(f.box, [182, 58, 270, 178]) > 0.8, f.box
    assert 1.1 < (y2 - y1) / (x2 - x1) < 1.6  # face boxes are taller than wide
    assert main_face(faces, astronaut.shape) == 0


def test_small_faces_get_larger_detection_sizes(centerface, astronaut, monkeypatch):
    """A face that is small in the downscaled frame is detected again at twice the size, until it is
    big enough there; a large face is detected once, at the smallest size."""
    scales = []
    detect = CenterFaceDetector._detect

    def spy(self, frame, scale):
        scales.append(scale)
        return detect(self, frame, scale)

    monkeypatch.setattr(CenterFaceDetector, "_detect", spy)
    ref = centerface(astronaut)[0]
    scales.clear()
    canvas = np.zeros((1536, 1536, 3), np.uint8)
    canvas[512:1024, 512:1024] = astronaut     # her face: ~120 px of 1536, 25 px at 320
    faces = centerface(canvas)
    assert scales == [320 / 1536, 640 / 1536, 1280 / 1536]
    assert len(faces) == 1
    assert _iou(faces[0].box - 512, ref.box) > 0.8
    assert np.max(np.linalg.norm(faces[0].landmarks - 512 - ref.landmarks, axis=1)) < 6.0

    scales.clear()
    big = np.repeat(np.repeat(astronaut, 2, axis=0), 2, axis=1)  # face ~240 px of 1024: 75 px at 320
    assert len(centerface(big)) == 1 and scales == [320 / 1024]

    scales.clear()
    assert centerface(np.zeros((1000, 1000, 3), np.uint8)) == []
    assert scales == [0.32, 0.64, 1.0]      # no face: every size up to the full frame, then give up


@pytest.mark.parametrize("layout", ["wide_canvas", "tall_canvas", "upscaled"])
def test_detection_maps_back_to_frame_pixels(centerface, astronaut, layout):
    """Frames whose sides are not multiples of 32, or that get downscaled, map back to frame pixels."""
    ref = centerface(astronaut)[0]
    if layout == "wide_canvas":
        frame = np.zeros((512, 900, 3), np.uint8)
        frame[:, 300:812] = astronaut
        off, scale = np.array([300, 0]), 1.0
    elif layout == "tall_canvas":
        frame = np.zeros((700, 512, 3), np.uint8)
        frame[150:662] = astronaut
        off, scale = np.array([0, 150]), 1.0
    else:
        frame = np.repeat(np.repeat(astronaut, 2, axis=0), 2, axis=1)  # 1024 > max_side 640
        off, scale = np.array([0, 0]), 2.0
    faces = centerface(frame)
    assert len(faces) == 1
    _assert_plausible_face(faces[0], frame.shape)
    box = (faces[0].box - np.tile(off, 2)) / scale
    assert _iou(box, ref.box) > 0.85, (box, ref.box)
    lms = (faces[0].landmarks - off) / scale
    assert np.max(np.linalg.norm(lms - ref.landmarks, axis=1)) < 6.0


@pytest.mark.parametrize("kind", ["grey", "black", "noise"])
def test_no_face(centerface, kind):
    if kind == "grey":
        frame = np.full((480, 640, 3), 128, np.uint8)
    elif kind == "black":
        frame = np.zeros((360, 360, 3), np.uint8)
    else:
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    faces = centerface(frame)
    assert faces == []
    assert main_face(faces, frame.shape) is None


def _sample_frames(path, n_samples=5):
    info = probe_video(path)
    wanted = set(np.linspace(0, info.n_frames - 1, n_samples).round().astype(int).tolist())
    out = []
    frames = iter_frames(info)
    try:
        for i, frame in enumerate(frames):
            if i in wanted:
                out.append((i, frame))
            if i >= max(wanted):
                break
    finally:
        frames.close()
    assert len(out) == len(wanted)
    return info, out


@requires_media
@pytest.mark.parametrize("name", ["talk_25fps_844.mp4", "talk_vfr_700.mp4"])
def test_real_clips_face_in_every_sampled_frame(centerface, name):
    info, frames = _sample_frames(media_file(name))
    for i, frame in frames:
        assert frame.shape == (info.height, info.width, 3)
        faces = centerface(frame)
        k = main_face(faces, frame.shape)
        assert k is not None, f"{name}: no face in frame {i}"
        f = faces[k]
        x1, y1, x2, y2 = f.box
        assert (x2 - x1) > 0.1 * info.width, f"{name} frame {i}: implausibly small face {f.box}"
        assert np.all((f.landmarks[:, 0] >= x1) & (f.landmarks[:, 0] <= x2)
                      & (f.landmarks[:, 1] >= y1) & (f.landmarks[:, 1] <= y2)), (name, i, f.box, f.landmarks)


# ------------------------------------------------------------------------------ decode_centerface
def _maps(h=8, w=8):
    return (np.zeros((h, w), np.float32), np.zeros((2, h, w), np.float32),
            np.zeros((2, h, w), np.float32), np.zeros((10, h, w), np.float32))


LM_X = [0.3, 0.7, 0.5, 0.35, 0.65]   # landmark x in box widths from the box's left edge
LM_Y = [0.4, 0.4, 0.6, 0.8, 0.8]     # landmark y in box heights from the box's top edge


def _hot_cell(maps, y, x, score, height, width, dy, dx):
    heat, size, offset, lms = maps
    heat[y, x] = score
    size[0, y, x] = math.log(height / 4)   # docstring: log(height / 4), log(width / 4)
    size[1, y, x] = math.log(width / 4)
    offset[0, y, x], offset[1, y, x] = dy, dx
    for k in range(5):
        lms[2 * k, y, x] = LM_Y[k]        # channels alternate (y, x)
        lms[2 * k + 1, y, x] = LM_X[k]


def test_decode_centerface_one_hot_cell_by_hand():
    maps = _maps()
    _hot_cell(maps, 3, 5, 0.9, height=40, width=32, dy=0.25, dx=-0.5)
    faces = decode_centerface(*maps, threshold=0.5, nms_iou=0.3)
    assert len(faces) == 1
    f = faces[0]
    # centre: cy = (3 + 0.25 + 0.5) * 4 = 15, cx = (5 - 0.5 + 0.5) * 4 = 20; box 32 wide, 40 high
    np.testing.assert_allclose(f.box, [4.0, -5.0, 36.0, 35.0], atol=1e-4)
    # landmarks: x = 4 + 32 * LM_X, y = -5 + 40 * LM_Y
    expected = np.array([[13.6, 11.0], [26.4, 11.0], [20.0, 19.0], [15.2, 27.0], [24.8, 27.0]])
    np.testing.assert_allclose(f.landmarks, expected, atol=1e-4)
    assert f.score == pytest.approx(0.9, abs=1e-6)


def test_decode_centerface_nms_and_order():
    maps = _maps()
    _hot_cell(maps, 0, 1, 0.7, height=8, width=8, dy=0.0, dx=0.0)     # small, far away, listed first
    _hot_cell(maps, 3, 5, 0.9, height=40, width=32, dy=0.25, dx=-0.5)
    _hot_cell(maps, 3, 6, 0.8, height=40, width=32, dy=0.25, dx=-0.5)  # same face, 4 px right: duplicate
    faces = decode_centerface(*maps, threshold=0.5, nms_iou=0.3)
    assert [round(f.score, 3) for f in faces] == [0.9, 0.7]
    np.testing.assert_allclose(faces[0].box, [4, -5, 36, 35], atol=1e-4)
    np.testing.assert_allclose(faces[1].box, [2, -2, 10, 6], atol=1e-4)  # centre (6, 2), 8x8


def test_decode_centerface_threshold_is_strict():
    maps = _maps()
    _hot_cell(maps, 2, 2, 0.5, height=16, width=16, dy=0, dx=0)
    assert decode_centerface(*maps, threshold=0.5, nms_iou=0.3) == []
    assert len(decode_centerface(*maps, threshold=0.49, nms_iou=0.3)) == 1


# ----------------------------------------------------------------------------- selection and boxes
def _face(box):
    return Face(np.asarray(box, np.float32), np.zeros((5, 2), np.float32), 0.9)


def test_main_face_weighs_area_by_centrality():
    shape = (100, 100, 3)
    corner = _face([0, 0, 40, 40])           # area 1600, 0.3 of the diagonal off centre -> 1120
    centre_small = _face([35, 35, 65, 65])   # area 900, centred -> 900
    centre_big = _face([30, 30, 70, 70])     # area 1600, centred -> 1600
    assert main_face([centre_small, corner], shape) == 1
    assert main_face([corner, centre_small, centre_big], shape) == 2
    assert main_face([], shape) is None


def test_pad_box_applies_pads_and_clamps():
    shape = (100, 120, 3)
    np.testing.assert_array_equal(pad_box(np.array([50, 40, 60, 50]), (1, 2, 3, 4), shape), [47, 39, 64, 52])
    # (top, bottom, left, right) pushing past every edge: clamped to the frame
    np.testing.assert_array_equal(pad_box(np.array([5, 8, 90, 95]), (10, 20, 7, 30), shape), [0, 0, 120, 100])
    assert pad_box(np.array([5, 8, 90, 95]), (0, 10, 0, 0), shape).dtype == np.float64
