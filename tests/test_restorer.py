"""Face alignment to the FFHQ template, paste-back, and deterministic restoration."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.face_detection import CenterFaceDetector
from models.restorer import (FACE_SIZE, FFHQ_TEMPLATE_512, LANCZOS_BAND, _band_columns, align_face, background,
                             covered_rect, feather_mask, lanczos2x, paste_face, restore_faces,
                             similarity_to_template)
from tests.conftest import astronaut_bgr


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def portrait_face():
    img = astronaut_bgr()
    faces = CenterFaceDetector()(img)
    assert len(faces) == 1
    return img, faces[0].landmarks


def test_alignment_puts_landmarks_on_the_template(portrait_face):
    img, lms = portrait_face
    crop, m = align_face(img, lms)
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3)
    mapped = np.hstack([lms, np.ones((5, 1))]) @ m.T
    # a similarity fit of 5 real points: within a few template pixels each
    assert np.abs(mapped - FFHQ_TEMPLATE_512).max() < 25
    # it is a similarity: equal scale on both axes, no shear
    a, b = m[0, :2], m[1, :2]
    assert abs(np.linalg.norm(a) - np.linalg.norm(b)) < 1e-6 and abs(a @ b) < 1e-6


def test_round_trip_with_identity_restorer(portrait_face):
    img, lms = portrait_face
    crop, m = align_face(img, lms)
    out = img.copy()
    paste_face(out, crop, m)  # identity "restorer": the aligned face itself
    assert psnr(out, img) >= 40.0
    # only the face's neighbourhood may change at all
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]]) @ inv.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    outside = np.ones(img.shape[:2], bool)
    outside[max(0, y0):y1, max(0, x0):x1] = False
    assert np.array_equal(out[outside], img[outside])


def test_round_trip_upscaled(portrait_face):
    img, lms = portrait_face
    crop, m = align_face(img, lms)
    up = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LANCZOS4)
    out = up.copy()
    paste_face(out, crop, m, upscale=2)
    assert psnr(out, up) >= 40.0


def _similarity(rng, frame_shape) -> np.ndarray:
    """A random aligned-face transform: any rotation, faces from a quarter to twice the frame's height."""
    h, w = frame_shape[:2]
    angle, scale = rng.uniform(-np.pi, np.pi), FACE_SIZE / (h * rng.uniform(0.25, 2.0))
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    return np.array([[c, -s, FACE_SIZE / 2 - (c * cx - s * cy)], [s, c, FACE_SIZE / 2 - (s * cx + c * cy)]])


@pytest.mark.parametrize("seed", range(6))
def test_covered_rectangle_lies_where_the_mask_is_one(portrait_face, seed):
    """paste_face copies the face without blending inside covered_rect: whatever the face's angle or
    size, that rectangle is inside the warped mask's ones."""
    rng = np.random.default_rng(seed)
    img, lms = portrait_face
    frame = img[: 300 + 17 * seed, : 280 + 13 * seed]  # odd sizes too
    m = align_face(frame, lms)[1] if seed == 0 else _similarity(rng, frame.shape)
    shape = (frame.shape[0] * 2, frame.shape[1] * 2)
    rect = covered_rect(m, 2, shape)
    assert rect is not None  # every one of these faces covers some of the frame
    if seed == 0:
        assert (rect[2] - rect[0]) * (rect[3] - rect[1]) > 0.1 * shape[0] * shape[1]
    x0, y0, x1, y1 = rect
    assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]
    inv = cv2.invertAffineTransform(m) * 2
    inv[:, 2] += 0.5
    alpha = cv2.warpAffine(feather_mask(), inv, shape[::-1], flags=cv2.INTER_LINEAR)
    assert alpha[y0:y1, x0:x1].min() >= 1.0 - 1e-6


def _pictures(portrait_face, h: int, w: int) -> list[np.ndarray]:
    """Noise (the worst case for rounding and overshoot), a smooth picture and a real one, h x w."""
    rng = np.random.default_rng(h * 1000 + w)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    photo = cv2.resize(portrait_face[0], (w, h), interpolation=cv2.INTER_AREA)
    return [noise, cv2.GaussianBlur(noise, (0, 0), 2), photo]


@pytest.mark.parametrize("h, w", [(1, 1), (2, 7), (5, 3), (9, 9), (64, 10), (70, 33), (333, 591), (512, 300)])
def test_lanczos2x_gives_opencvs_lanczos_resize(portrait_face, h, w):
    """The filter form of the 2x upscale gives cv2.resize's INTER_LANCZOS4 pixels, borders and the seams
    between its bands of rows included, but for a level where float32 rounds across a half."""
    for picture in _pictures(portrait_face, h, w):
        want = cv2.resize(picture, (2 * w, 2 * h), interpolation=cv2.INTER_LANCZOS4)
        got = lanczos2x(picture)
        assert got.shape == want.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(np.int16) - want)
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4


@pytest.mark.parametrize("rects, want", [
    ([(10, 128, 50, 256)], [(0, 5), (25, 100)]),         # output rows 128-255: the band's, exactly
    ([(11, 128, 51, 256)], [(0, 6), (25, 100)]),         # odd edges: only whole output pixel pairs inside
    ([(10, 129, 50, 256)], [(0, 100)]),                  # one row short above
    ([(10, 128, 50, 255)], [(0, 100)]),                  # and below
    ([(10, 0, 50, 300), (40, 100, 220, 300)], [(0, 5)]),  # overlapping, one past the right edge
    ([(0, 0, 200, 300)], []),
])
def test_band_columns_leave_out_whole_pixel_pairs_inside(rects, want):
    assert _band_columns(64, 128, 100, rects) == want


@pytest.mark.parametrize("seed", range(12))
def test_background_leaves_out_only_what_the_faces_cover(portrait_face, seed):
    """background() does not enlarge the rectangles the faces will cover: once one to three faces (any
    angle and size, some partly outside the frame, overlapping) are pasted, the frame is the one pasted on
    the whole 2x Lanczos, to the bit, on a photo and on noise."""
    rng = np.random.default_rng(200 + seed)
    img, lms = portrait_face
    frame = img[: 200 + 23 * seed, : 180 + 29 * seed]
    ms = [align_face(frame, lms)[1]] if seed == 0 else [_similarity(rng, frame.shape)
                                                        for _ in range(rng.integers(1, 4))]
    if seed % 2:  # noise: a wrong tap at a piece's edge shows
        frame = rng.integers(0, 256, frame.shape, dtype=np.uint8)
    faces = [rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8) for _ in ms]
    got, want = background(frame, ms, 2), lanczos2x(frame)
    rects = [r for m in ms if (r := covered_rect(m, 2, want.shape)) is not None]
    outside = np.ones(want.shape[:2], bool)
    for x0, y0, x1, y1 in rects:
        outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(got[outside], want[outside])  # before any paste: the rest is exact
    for face, m in zip(faces, ms):
        paste_face(got, face, m, 2)
        paste_face(want, face, m, 2)
    np.testing.assert_array_equal(got, want)
    h, w = frame.shape[:2]
    skipped = [_band_columns(r0, min(h, r0 + LANCZOS_BAND), w, rects) != [(0, w)] for r0 in range(0, h, LANCZOS_BAND)]
    if seed in (0, 1, 2):  # these faces are large enough to leave whole bands' columns out
        assert any(skipped)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("upscale", [1, 2])
def test_paste_is_the_feathered_blend_of_the_warped_face(portrait_face, seed, upscale):
    """paste_face (the face copied where the mask is one, blended in the strips around) gives the plain
    formula's pixels -- face and mask warped over the whole canvas, blended in floats -- to within one
    level, at any angle and size, with the face partly outside the frame too."""
    rng = np.random.default_rng(100 + seed)
    img, lms = portrait_face
    frame = img[: 300 + 17 * seed, : 280 + 13 * seed]
    m = align_face(frame, lms)[1] if seed == 0 else _similarity(rng, frame.shape)
    face = rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    canvas = rng.integers(0, 256, (frame.shape[0] * upscale, frame.shape[1] * upscale, 3), dtype=np.uint8)
    inv = cv2.invertAffineTransform(m) * upscale
    inv[:, 2] += 0.5 * (upscale - 1)
    size = canvas.shape[1::-1]
    warped = cv2.warpAffine(face, inv, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(feather_mask(), inv, size, flags=cv2.INTER_LINEAR)[..., None].astype(np.float64)
    want = warped * alpha + canvas * (1.0 - alpha)
    out = canvas.copy()
    paste_face(out, face, m, upscale)
    # the warp is done inside the face's bounding rectangle: OpenCV rounds the shifted transform's pixel
    # coordinates to 1/32 px a little differently there, which moves a few pixels of this noise face by a
    # level or so (at most 1.5 and 0.12% of the canvas in these cases)
    diff = np.abs(out - want)
    assert diff.max() <= 2.0 and np.mean(diff > 0.51) < 5e-3
    assert (alpha == 1.0).any() and not np.array_equal(out, canvas)


def test_pasted_face_replaces_the_face_region(portrait_face):
    img, lms = portrait_face
    _, m = align_face(img, lms)
    white = np.full((FACE_SIZE, FACE_SIZE, 3), 255, np.uint8)
    out = img.copy()
    paste_face(out, white, m)
    nose = lms[2].round().astype(int)
    assert (out[nose[1], nose[0]] == 255).all()   # the centre is fully the restored face
    assert np.array_equal(out[5, 5], img[5, 5])    # a far corner is untouched


def test_degenerate_landmarks_raise():
    with pytest.raises(ValueError):
        similarity_to_template(np.zeros((5, 2), np.float32))


def test_restoration_is_deterministic_and_blends(models_dir, portrait_face):
    from models.loading import get_model

    img, lms = portrait_face
    crop, _ = align_face(img, lms)
    net, dev = get_model("gfpgan", "GFPGANv1.4.pth", "cpu")
    a = restore_faces(net, [crop], dev)[0]
    b = restore_faces(net, [crop], dev)[0]
    assert a.shape == crop.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)  # fixed noise: the same face restores to the same pixels
    assert np.mean(np.abs(a.astype(int) - crop)) > 5  # random weights really change the face
    none = restore_faces(net, [crop], dev, weight=0.0)[0]
    assert np.abs(none.astype(int) - crop).max() <= 1
