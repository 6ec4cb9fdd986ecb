"""GFPGAN face restoration: the network class from ``gfpgan``; alignment, batching and paste-back ours.

Each face is aligned to the 512x512 FFHQ template with a similarity transform fitted to its 5
landmarks, restored, and warped back into the frame with a feathered mask, touching only the face's
bounding rectangle. Restoration is deterministic (``randomize_noise=False``: the fixed noise buffers).
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from models.batching import split_on_oom
from models.checkpoint import load_strict, pick_state_dict, read_checkpoint
from models.precision import autocast

FACE_SIZE = 512
FFHQ_TEMPLATE_512 = np.array([
    [192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
    [201.26117, 371.41043], [313.08905, 371.15118],
], dtype=np.float32)
MIN_EYE_DISTANCE = 5.0
BORDER_VALUE = (132, 133, 135)  # BGR grey the released helper pads aligned faces with


def _import_gfpgan_arch():
    """Import GFPGANv1Clean despite basicsr 1.4.2 importing a torchvision module removed in 0.17.

    basicsr wants ``torchvision.transforms.functional_tensor``; its content now lives at
    ``torchvision.transforms._functional_tensor``. We alias the old name (only if it is absent)
    rather than patch the installed package, so a fixed basicsr release needs no change here.
    """
    legacy = "torchvision.transforms.functional_tensor"
    if legacy not in sys.modules:
        try:
            __import__(legacy)
        except ImportError:
            import torchvision.transforms._functional_tensor as moved

            sys.modules[legacy] = moved
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    return GFPGANv1Clean


def build_gfpgan() -> torch.nn.Module:
    """GFPGANv1Clean configured as the released v1.3 / v1.4 models."""
    cls = _import_gfpgan_arch()
    return cls(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
               fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
               sft_half=True)


def load_gfpgan(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Load ``GFPGANv1.3.pth`` / ``GFPGANv1.4.pth`` (``params_ema``, else ``params``) strictly."""
    ckpt = read_checkpoint(path)
    sd = pick_state_dict(ckpt, path, nested=("params_ema", "params"))
    return load_strict(build_gfpgan(), sd, path).to(device).eval()


# ----------------------------------------------------------------------------------- alignment
def similarity_to_template(landmarks: np.ndarray) -> np.ndarray:
    """2x3 similarity transform taking the 5 landmarks onto the FFHQ template."""
    m, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), FFHQ_TEMPLATE_512,
                                       method=cv2.LMEDS)
    if m is None:
        raise ValueError("landmarks are degenerate: no similarity transform")
    return m


def align_face(frame: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 512x512 aligned face and the transform that produced it."""
    m = similarity_to_template(landmarks)
    crop = cv2.warpAffine(frame, m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE)
    return crop, m


@functools.cache
def feather_mask() -> np.ndarray:
    """Soft 512x512 mask in aligned space: one in the middle, falling to zero over ~10% at the edges.

    Matches the released helper's erode-then-blur edge (width sqrt(face area)/20) measured in the
    aligned face, so it is computed once instead of per face at frame resolution.
    """
    edge = FACE_SIZE // 20
    mask = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
    mask[edge + 1:FACE_SIZE - edge - 1, edge + 1:FACE_SIZE - edge - 1] = 1.0
    return cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)


def to_canvas(m: np.ndarray, upscale: int) -> np.ndarray:
    """2x3 transform from the aligned face to the ``upscale``-times canvas (``m``: frame to aligned)."""
    inv = cv2.invertAffineTransform(m) * upscale
    # pixel centres: source x maps to upscale * x + (upscale - 1) / 2 in the upscaled canvas
    inv[:, 2] += 0.5 * (upscale - 1)
    return inv


def paste_face(canvas: np.ndarray, face: np.ndarray, m: np.ndarray, upscale: int = 1) -> None:
    """Warp an aligned (restored) face back into ``canvas`` (already at ``upscale`` x the source
    frame's size) in place, blending with the feathered mask inside the face's bounding rectangle."""
    inv = to_canvas(m, upscale)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]],
                       np.float64) @ inv.T
    h, w = canvas.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    roi = canvas[y0:y1, x0:x1]
    rh, rw = roi.shape[:2]
    # where the mask is one the face is warped straight into the canvas; the mask is warped and blended
    # only in the strips around that rectangle: at --upscale 2 on a close-up this halves the paste's cost.
    # Every piece is written in place: a fresh array the size of the rectangle cost ~2 ms after the network ran
    inner = covered_rect(m, upscale, canvas.shape)
    if inner is None:
        ix0 = iy0 = ix1 = iy1 = 0
    else:
        ix0, ix1 = (min(max(v - x0, 0), rw) for v in (inner[0], inner[2]))
        iy0, iy1 = (min(max(v - y0, 0), rh) for v in (inner[1], inner[3]))
    pieces = ((iy0, iy1, ix0, ix1), (0, iy0, 0, rw), (iy1, rh, 0, rw), (iy0, iy1, 0, ix0), (iy0, iy1, ix1, rw))
    for k, (top, bottom, left, right) in enumerate(pieces):
        if bottom <= top or right <= left:
            continue
        piece_inv = inv.copy()
        piece_inv[:, 2] -= (x0 + left, y0 + top)
        size, piece = (right - left, bottom - top), roi[top:bottom, left:right]
        if k == 0:  # the rectangle of ones
            cv2.warpAffine(face, piece_inv, size, dst=piece, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            continue
        warped = cv2.warpAffine(face, piece_inv, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(feather_mask(), piece_inv, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # one OpenCV call: 5x faster than the same blend in numpy floats (which rounded half up; this
        # rounds to nearest even: 0.003% of pixels differ by one level)
        cv2.blendLinear(warped, piece, alpha, 1.0 - alpha, dst=piece)


# the feather mask is exactly 1 on [INTERIOR, FACE_SIZE - 1 - INTERIOR] in both axes: there the face is
# pasted over whatever lies beneath (one pixel kept in reserve for the bilinear warp's neighbours)
INTERIOR = 52


def covered_rect(m: np.ndarray, upscale: int, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """An axis-aligned rectangle (x0, y0, x1, y1) of the ``upscale``-times canvas of shape ``shape`` that
    :func:`paste_face` with transform ``m`` covers entirely with the face (mask 1). None when it is empty."""
    inv = to_canvas(m, upscale)
    centre = inv @ np.array([FACE_SIZE / 2 - 0.5, FACE_SIZE / 2 - 0.5, 1.0])
    scale = float(np.hypot(inv[0, 0], inv[1, 0]))
    cos, sin = abs(inv[0, 0]) / scale, abs(inv[1, 0]) / scale
    # the mask's square of ones, rotated, contains this axis-aligned square; 1 px kept for rounding
    half = scale * (FACE_SIZE - 1 - 2 * INTERIOR) / 2 / (cos + sin) - 1
    h, w = shape[:2]
    x0, y0 = (int(np.ceil(max(0.0, c - half))) for c in centre)
    x1, y1 = (int(np.floor(min(lim, c + half))) for c, lim in zip(centre, (w, h)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _lanczos_taps(frac: float) -> np.ndarray:
    """OpenCV's 8 Lanczos-4 weights for a sample ``frac`` of a pixel past a source pixel, in its 11-bit
    fixed point (the sum of its 8-bit resize is exact in float32 at this scale)."""
    t = frac + 3 - np.arange(8)
    w = np.sinc(t) * np.sinc(t / 4)
    return np.rint(w / w.sum() * 2048).astype(np.float32)


# at exactly 2x every output pixel lies 0.75 (even ones) or 0.25 (odd ones) of a pixel past a source
# pixel: the resize is two fixed 8-tap filters per axis; (taps, anchor) for even and odd outputs
_LANCZOS_2X = ((_lanczos_taps(0.75), 4), (_lanczos_taps(0.25), 3))


LANCZOS_BAND = 64  # source rows per pass: the float buffers stay in cache (17 MB each for a whole 844x844 frame)


def lanczos2x(frame: np.ndarray, skip: Sequence[tuple[int, int, int, int]] = ()) -> np.ndarray:
    """``frame`` (h, w, 3 uint8) enlarged 2x, the pixels of OpenCV's ``INTER_LANCZOS4`` resize to within one
    level (where float32 rounds across a half: ~1e-5 of them), in OpenCV's vectorized filters: 2-3x faster
    than its general Lanczos resize. Bands of rows are shared among OpenCV's thread count of
    threads (its own split of these small calls gained nothing).

    ``skip``: rectangles (x0, y0, x1, y1) of the output that the caller overwrites entirely; where a band
    of rows lies inside one, the columns inside it are left unfilled."""
    h, w = frame.shape[:2]
    out = np.empty((2 * h, w, 6), np.uint8)  # the even and odd output columns of a pixel pair side by side
    starts = range(0, h, LANCZOS_BAND)
    threads = min(cv2.getNumThreads(), len(starts))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda k: _lanczos2x_bands(frame, out, starts[k::threads], skip), range(threads)))
    else:
        _lanczos2x_bands(frame, out, starts, skip)
    return out.reshape(2 * h, 2 * w, 3)


def _band_columns(r0: int, r1: int, w: int, skip: Sequence[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """The ranges of source columns to enlarge in the band of source rows [r0, r1): all but those whose
    output lies inside a rectangle of ``skip`` on every row of the band."""
    spans = ((-(-x0 // 2), x1 // 2) for x0, y0, x1, y1 in skip if y0 <= 2 * r0 and 2 * r1 <= y1)
    cut = sorted((a, b) for a, b in spans if a < b)
    ranges, c = [], 0
    for a, b in cut:
        if a > c:
            ranges.append((c, a))
        c = max(c, b)
    if c < w:
        ranges.append((c, w))
    return ranges


def _lanczos2x_bands(frame: np.ndarray, out: np.ndarray, starts: range,
                     skip: Sequence[tuple[int, int, int, int]]) -> None:
    """The output rows of the bands of source rows beginning at ``starts``, each band read with the 4 rows
    (and, beside a skipped rectangle, 4 columns) either side that the taps reach; one set of buffers for
    all of them (fresh ones per band cost more in page faults than the filters)."""
    h, w = frame.shape[:2]
    src_buf = np.empty((LANCZOS_BAND + 8) * w * 3, np.float32)
    rows_buf = np.empty((LANCZOS_BAND + 8) * 2 * w * 3, np.float32)  # even and odd output rows interleaved
    filtered_buf = np.empty(2 * LANCZOS_BAND * w * 3, np.float32)
    cols_buf = np.empty(2 * 2 * LANCZOS_BAND * w * 3, np.uint8)
    for r0 in starts:
        r1 = min(h, r0 + LANCZOS_BAND)
        a, b = max(0, r0 - 4), min(h, r1 + 4)
        for c0, c1 in _band_columns(r0, r1, w, skip):
            ca, cb = max(0, c0 - 4), min(w, c1 + 4)
            n = (cb - ca) * 3
            src = src_buf[:(b - a) * n].reshape(b - a, n)
            rows = rows_buf[:(b - a) * 2 * n].reshape(b - a, 2, n)
            np.copyto(src, frame[a:b, ca:cb].reshape(b - a, n))
            for p, (taps, anchor) in enumerate(_LANCZOS_2X):
                cv2.filter2D(src, cv2.CV_32F, taps[:, None], dst=rows[:, p], anchor=(0, anchor),
                             borderType=cv2.BORDER_REPLICATE)
            band = rows[r0 - a:r1 - a].reshape(2 * (r1 - r0), cb - ca, 3)
            filtered = filtered_buf[:2 * (r1 - r0) * n].reshape(2 * (r1 - r0), cb - ca, 3)
            cols = cols_buf[:2 * 2 * (r1 - r0) * n].reshape(2, 2 * (r1 - r0), n)
            for p, (taps, anchor) in enumerate(_LANCZOS_2X):
                cv2.filter2D(band, cv2.CV_32F, taps[None, :] / 2 ** 22, dst=filtered, anchor=(anchor, 0),
                             borderType=cv2.BORDER_REPLICATE)
                # on one channel: OpenCV's saturating, rounding conversion is 3x slower on three
                cv2.add(filtered.reshape(-1, n), 0.0, dst=cols[p], dtype=cv2.CV_8U)
            cv2.merge([c.reshape(-1, cb - ca, 3)[:, c0 - ca:c1 - ca] for c in cols], dst=out[2 * r0:2 * r1, c0:c1])


def background(frame: np.ndarray, transforms: Sequence[np.ndarray], upscale: int) -> np.ndarray:
    """The canvas ``frame``'s faces (aligned by ``transforms``) are pasted on with :func:`paste_face`: a copy
    of the frame, or its 2x Lanczos without the rectangles the faces will cover."""
    if upscale == 1:
        return frame.copy()
    shape = (2 * frame.shape[0], 2 * frame.shape[1])
    return lanczos2x(frame, [r for m in transforms if (r := covered_rect(m, upscale, shape)) is not None])


def paste_back(frame: np.ndarray, faces: Sequence[np.ndarray], transforms: Sequence[np.ndarray],
               upscale: int) -> np.ndarray:
    """``frame`` at ``upscale`` with its restored ``faces`` (aligned by ``transforms``) pasted on: a new
    array (the frame itself is not written into)."""
    canvas = background(frame, transforms, upscale)
    for face, m in zip(faces, transforms):
        paste_face(canvas, face, m, upscale)
    return canvas


def eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(landmarks[0]) - np.asarray(landmarks[1])))


# ----------------------------------------------------------------------------------- restoring
def restore_faces(net, faces_bgr: list[np.ndarray], device: torch.device | str,
                  weight: float = 1.0, precision: str = "fp32") -> list[np.ndarray]:
    """Restore aligned 512x512 BGR faces in one batch; ``weight`` blends restored with the input.

    ``net``: the torch module (run at ``precision``), or a compiled engine from
    :func:`models.loading.get_restorer` (its precision was fixed when it was compiled)."""
    if not faces_bgr:
        return []
    batch = np.stack([f[..., ::-1] for f in faces_bgr]).astype(np.float32)  # RGB
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)
    x = (x / 255.0 - 0.5) / 0.5
    if isinstance(net, torch.nn.Module):
        with torch.inference_mode(), autocast(device, precision):
            out = split_on_oom(lambda t: net(t, return_rgb=False, randomize_noise=False)[0], x)
    else:
        out = net(x)
    out = ((out.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).cpu().numpy()
    restored = np.rint(out).astype(np.uint8)[..., ::-1]
    if weight < 1.0:
        restored = [cv2.addWeighted(r, weight, f, 1 - weight, 0) for r, f in zip(restored, faces_bgr)]
    return [np.ascontiguousarray(r) for r in restored]
