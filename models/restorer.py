"""GFPGAN face restoration: the network class from ``gfpgan``; alignment, batching and paste-back ours.

Each face is aligned to the 512x512 FFHQ template with a similarity transform fitted to its 5
landmarks, restored, and warped back into the frame with a feathered mask, touching only the face's
bounding rectangle. Restoration is deterministic (``randomize_noise=False``: the fixed noise buffers).
"""
from __future__ import annotations

import functools
import sys
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
    roi_inv = inv.copy()
    roi_inv[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(face, roi_inv, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    roi = canvas[y0:y1, x0:x1]
    # where the mask is one the face is copied; the mask is warped and blended only in the strips around
    # that rectangle: at --upscale 2 on a close-up this halves the paste's cost
    inner = covered_rect(m, upscale, canvas.shape)
    if inner is None:
        ix0 = iy0 = ix1 = iy1 = 0
    else:
        ix0, ix1 = (min(max(v - x0, 0), x1 - x0) for v in (inner[0], inner[2]))
        iy0, iy1 = (min(max(v - y0, 0), y1 - y0) for v in (inner[1], inner[3]))
        roi[iy0:iy1, ix0:ix1] = warped[iy0:iy1, ix0:ix1]
    rh, rw = roi.shape[:2]
    for top, bottom, left, right in ((0, iy0, 0, rw), (iy1, rh, 0, rw), (iy0, iy1, 0, ix0), (iy0, iy1, ix1, rw)):
        if bottom <= top or right <= left:
            continue
        strip_inv = roi_inv.copy()
        strip_inv[:, 2] -= (left, top)
        alpha = cv2.warpAffine(feather_mask(), strip_inv, (right - left, bottom - top), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # one OpenCV call: 5x faster than the same blend in numpy floats (which rounded half up; this
        # rounds to nearest even: 0.003% of pixels differ by one level)
        roi[top:bottom, left:right] = cv2.blendLinear(warped[top:bottom, left:right], roi[top:bottom, left:right],
                                                      alpha, 1.0 - alpha)


# the feather mask is exactly 1 on [INTERIOR, FACE_SIZE - 1 - INTERIOR] in both axes: there the face is
# pasted over whatever lies beneath (one pixel kept in reserve for the bilinear warp's neighbours)
INTERIOR = 52
LANCZOS_MARGIN = 5  # source pixels beyond a piece that its Lanczos taps (4 each side) may read


def covered_rect(m: np.ndarray, upscale: int, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """An axis-aligned rectangle (x0, y0, x1, y1) of the ``upscale``-times canvas of shape ``shape`` that
    :func:`paste_face` with transform ``m`` covers entirely with the face (mask 1); corners on multiples
    of ``upscale``. None when it is empty."""
    inv = to_canvas(m, upscale)
    centre = inv @ np.array([FACE_SIZE / 2 - 0.5, FACE_SIZE / 2 - 0.5, 1.0])
    scale = float(np.hypot(inv[0, 0], inv[1, 0]))
    cos, sin = abs(inv[0, 0]) / scale, abs(inv[1, 0]) / scale
    # the mask's square of ones, rotated, contains this axis-aligned square; 1 px kept for rounding
    half = scale * (FACE_SIZE - 1 - 2 * INTERIOR) / 2 / (cos + sin) - 1
    h, w = shape[:2]
    x0, y0 = (int(np.ceil(max(0.0, c - half) / upscale)) * upscale for c in centre)
    x1, y1 = (int(np.floor(min(lim, c + half) / upscale)) * upscale for c, lim in zip(centre, (w, h)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def upscale_frame(frame: np.ndarray, upscale: int, skip: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``frame`` enlarged ``upscale`` times with Lanczos (OpenCV's), except inside ``skip`` (a rectangle of
    the result on multiples of ``upscale``, left black): a face pasted there hides it, and on a close-up
    that is a third of the work. Outside it the pixels equal a whole-frame resize: each piece is resized
    with a margin of source pixels, so its taps read what the whole frame's would."""
    h, w = frame.shape[:2]
    if skip is None:
        return cv2.resize(frame, (w * upscale, h * upscale), interpolation=cv2.INTER_LANCZOS4)
    out = np.zeros((h * upscale, w * upscale, 3), np.uint8)
    x0, y0, x1, y1 = (v // upscale for v in skip)
    for top, bottom, left, right in ((0, y0, 0, w), (y1, h, 0, w), (y0, y1, 0, x0), (y0, y1, x1, w)):
        if bottom <= top or right <= left:
            continue
        t, b = max(0, top - LANCZOS_MARGIN), min(h, bottom + LANCZOS_MARGIN)
        lf, r = max(0, left - LANCZOS_MARGIN), min(w, right + LANCZOS_MARGIN)
        piece = cv2.resize(frame[t:b, lf:r], ((r - lf) * upscale, (b - t) * upscale),
                           interpolation=cv2.INTER_LANCZOS4)
        out[top * upscale:bottom * upscale, left * upscale:right * upscale] = piece[
            (top - t) * upscale:(bottom - t) * upscale, (left - lf) * upscale:(right - lf) * upscale]
    return out


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
