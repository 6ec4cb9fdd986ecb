"""S3FD face detector (Zhang et al., 2017) in the layout of the face-alignment / Wav2Lip PyTorch port.

The module tree mirrors the published weight file ``s3fd-619a316812.pth`` key for key, so that file
loads strictly. Inference follows Wav2Lip's ``face_detection`` package: the BGR frame is reversed to
RGB and then the Caffe mean (104, 117, 123) is subtracted channel-wise in that order; candidates are
decoded from one square anchor per cell, reduced with greedy NMS (IoU 0.3, integer-pixel areas) and
kept when their face score is above 0.5.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_strict, pick_state_dict, read_checkpoint

__all__ = [
    "S3FD",
    "L2Norm",
    "load_s3fd",
    "s3fd_detect",
    "preprocess",
    "make_priors",
    "decode_boxes",
    "nms",
    "MEAN",
    "STRIDES",
    "VARIANCES",
]

# Subtracted after the BGR->RGB swap, in this order: the weights were used this way by Wav2Lip.
MEAN: tuple[float, float, float] = (104.0, 117.0, 123.0)
# Detection heads in forward order: conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2.
STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
ANCHOR_PER_STRIDE = 4
VARIANCES: tuple[float, float] = (0.1, 0.2)

# Name, in/out channels, kernel, stride, padding of every convolution, in the published naming.
_BACKBONE: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("conv1_1", 3, 64, 3, 1, 1), ("conv1_2", 64, 64, 3, 1, 1),
    ("conv2_1", 64, 128, 3, 1, 1), ("conv2_2", 128, 128, 3, 1, 1),
    ("conv3_1", 128, 256, 3, 1, 1), ("conv3_2", 256, 256, 3, 1, 1), ("conv3_3", 256, 256, 3, 1, 1),
    ("conv4_1", 256, 512, 3, 1, 1), ("conv4_2", 512, 512, 3, 1, 1), ("conv4_3", 512, 512, 3, 1, 1),
    ("conv5_1", 512, 512, 3, 1, 1), ("conv5_2", 512, 512, 3, 1, 1), ("conv5_3", 512, 512, 3, 1, 1),
    # The PyTorch port has no dilation here (padding 3 alone), which grows the map; kept for fidelity.
    ("fc6", 512, 1024, 3, 1, 3), ("fc7", 1024, 1024, 1, 1, 0),
    ("conv6_1", 1024, 256, 1, 1, 0), ("conv6_2", 256, 512, 3, 2, 1),
    ("conv7_1", 512, 128, 1, 1, 0), ("conv7_2", 128, 256, 3, 2, 1),
)
# Source feature, its channels, and conf channels (conv3_3 has 3 background logits + 1 face logit).
_HEADS: tuple[tuple[str, int, int], ...] = (
    ("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2),
    ("fc7", 1024, 2), ("conv6_2", 512, 2), ("conv7_2", 256, 2),
)
_NORM_SCALES: tuple[tuple[str, int, float], ...] = (
    ("conv3_3_norm", 256, 10.0), ("conv4_3_norm", 512, 8.0), ("conv5_3_norm", 512, 5.0),
)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (parameter ``weight``)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eps is added to the norm (not clamped) to match the port numerically.
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


class S3FD(nn.Module):
    """VGG16-based S3FD. ``forward`` returns ``[conf, loc] * 6`` from stride 4 to stride 128.

    Every conf map has 2 channels (background, face); the stride-4 head's 3 background logits are
    reduced to their maximum ("max-out background label").
    """

    def __init__(self) -> None:
        super().__init__()
        for name, cin, cout, k, s, p in _BACKBONE:
            self.add_module(name, nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p))
        for name, ch, scale in _NORM_SCALES:
            self.add_module(name, L2Norm(ch, scale))
        for src, ch, nconf in _HEADS:
            self.add_module(f"{src}_mbox_conf", nn.Conv2d(ch, nconf, kernel_size=3, padding=1))
            self.add_module(f"{src}_mbox_loc", nn.Conv2d(ch, 4, kernel_size=3, padding=1))

    def _block(self, h: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        for name in names:
            h = F.relu(getattr(self, name)(h))
        return h

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self._block(x, ("conv1_1", "conv1_2"))
        h = self._block(F.max_pool2d(h, 2, 2), ("conv2_1", "conv2_2"))
        f3 = self._block(F.max_pool2d(h, 2, 2), ("conv3_1", "conv3_2", "conv3_3"))
        f4 = self._block(F.max_pool2d(f3, 2, 2), ("conv4_1", "conv4_2", "conv4_3"))
        f5 = self._block(F.max_pool2d(f4, 2, 2), ("conv5_1", "conv5_2", "conv5_3"))
        f7 = self._block(F.max_pool2d(f5, 2, 2), ("fc6", "fc7"))
        f6_2 = self._block(f7, ("conv6_1", "conv6_2"))
        f7_2 = self._block(f6_2, ("conv7_1", "conv7_2"))

        sources = (
            self.conv3_3_norm(f3), self.conv4_3_norm(f4), self.conv5_3_norm(f5), f7, f6_2, f7_2,
        )
        outputs: list[torch.Tensor] = []
        for (src, _, _), feat in zip(_HEADS, sources):
            conf = getattr(self, f"{src}_mbox_conf")(feat)
            if conf.shape[1] == 4:
                # Many small anchors are background; the max over three background logits cuts false positives.
                conf = torch.cat([conf[:, :3].amax(dim=1, keepdim=True), conf[:, 3:]], dim=1)
            outputs += [conf, getattr(self, f"{src}_mbox_loc")(feat)]
        return outputs


def load_s3fd(path: str | Path, device: str | torch.device) -> S3FD:
    """Build :class:`S3FD`, load the bare state dict at ``path`` strictly, return it on ``device`` in eval mode."""
    sd = pick_state_dict(read_checkpoint(path), path)
    net = S3FD()
    load_strict(net, sd, path)
    return net.to(device).eval()


def preprocess(images_bgr: Sequence[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """Stack same-size HxWx3 BGR images into an (N, 3, H, W) float tensor: RGB order minus :data:`MEAN`."""
    batch = torch.from_numpy(np.stack([np.asarray(im) for im in images_bgr])).to(device)
    batch = batch.permute(0, 3, 1, 2).flip(1).float()
    return batch - torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1)


def make_priors(feat_h: int, feat_w: int, stride: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Square anchors ``(cx, cy, w, h)`` of side ``4 * stride`` at each cell centre, row-major, shape (H*W, 4)."""
    ys = (torch.arange(feat_h, dtype=torch.float32, device=device) * stride + stride / 2)
    xs = (torch.arange(feat_w, dtype=torch.float32, device=device) * stride + stride / 2)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    side = torch.full_like(cx, float(ANCHOR_PER_STRIDE * stride))
    return torch.stack([cx, cy, side, side], dim=-1).reshape(-1, 4)


def decode_boxes(
    loc: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = VARIANCES
) -> torch.Tensor:
    """Turn SSD offsets ``loc`` (..., 4) against ``priors`` (cx, cy, w, h) into corner boxes (x1, y1, x2, y2).

    centre = prior centre + loc[:2] * v0 * prior size; size = prior size * exp(loc[2:] * v1).
    """
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    top_left = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:] - size / 2
    # x2 = x1 + w (not cx + w/2) to reproduce the reference's float rounding.
    return torch.cat([top_left, top_left + size], dim=-1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; returns kept indices, best score first. Suppresses overlaps with IoU > ``iou_threshold``.

    Areas use the integer-pixel convention ``(x2 - x1 + 1) * (y2 - y1 + 1)`` of the reference detector.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iw = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = iw * ih
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _candidates(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode all heads: boxes (N, K, 4) and face scores (N, K) on the network's device."""
    all_boxes, all_scores = [], []
    for level, stride in enumerate(STRIDES):
        conf, loc = outputs[2 * level], outputs[2 * level + 1]
        n, _, fh, fw = conf.shape
        all_scores.append(F.softmax(conf, dim=1)[:, 1].reshape(n, -1))
        offsets = loc.permute(0, 2, 3, 1).reshape(n, -1, 4)
        all_boxes.append(decode_boxes(offsets, make_priors(fh, fw, stride, loc.device).unsqueeze(0)))
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


def _select(boxes: np.ndarray, scores: np.ndarray, height: int, width: int,
            score_threshold: float, nms_iou: float) -> np.ndarray:
    # Filtering before NMS gives the reference's result: only higher-scored boxes can suppress a box,
    # so boxes at or below the threshold never change which boxes above it survive.
    mask = scores > score_threshold
    boxes, scores = boxes[mask], scores[mask]
    keep = nms(boxes, scores, nms_iou)
    dets = np.concatenate([boxes[keep], scores[keep, None]], axis=1).astype(np.float32)
    # Clip after NMS, as the reference suppresses on unclipped boxes.
    dets[:, [0, 2]] = np.clip(dets[:, [0, 2]], 0, width)
    dets[:, [1, 3]] = np.clip(dets[:, [1, 3]], 0, height)
    return dets.reshape(-1, 5)


def s3fd_detect(
    net: S3FD,
    images_bgr: Sequence[np.ndarray],
    device: str | torch.device,
    score_threshold: float = 0.5,
    nms_iou: float = 0.3,
) -> list[np.ndarray]:
    """Detect faces in BGR uint8 HxWx3 images.

    Returns one float32 array (k, 5) per image -- x1, y1, x2, y2, score -- sorted by score, highest
    first, boxes clipped to the image. Images of the same size go through the network together.
    """
    for i, im in enumerate(images_bgr):
        if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3):
            raise ValueError(f"image {i}: expected an HxWx3 BGR array, got {getattr(im, 'shape', type(im))}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images_bgr):
        groups.setdefault(im.shape, []).append(i)

    results: list[np.ndarray | None] = [None] * len(images_bgr)
    with torch.inference_mode():
        for (height, width, _), idxs in groups.items():
            batch = preprocess([images_bgr[i] for i in idxs], device)
            boxes, scores = _candidates(net(batch))
            boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
            for j, i in enumerate(idxs):
                results[i] = _select(boxes[j], scores[j], height, width, score_threshold, nms_iou)
    return results  # type: ignore[return-value]
