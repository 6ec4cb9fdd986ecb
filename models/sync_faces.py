"""Face crops for SyncNet, made the way the reference evaluation makes them (joonson/syncnet_python's
``run_pipeline.py``): detect faces in every frame at 25 fps, link detections into tracks by box
overlap, fill the gaps by interpolation, median-filter the crop centre and size over 13 frames, and cut
a square around each face with a 0.4 margin (more below the face: the mouth and chin), padded with grey
110 where it leaves the frame, resized to 224x224.

Differences from the reference, for one talking-face output rather than a video in the wild: faces
come from our CenterFace detector (the reference uses S3FD at a quarter of the frame size), there is no
shot detection, and every track of at least 7 frames is scored instead of those longer than 100 frames
with faces over 100 pixels (a clip of a few seconds still gets a score).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from models.face_track import iou
from models.syncnet import CROP, median_filter

IOU_THRESHOLD = 0.5          # a detection continues a track when it overlaps its last box by more
MAX_MISSED = 25              # frames a track may go without a detection before it ends
SMOOTH_KERNEL = 13           # median filter of the crop centre and size, in frames
CROP_SCALE = 0.4             # margin around the face box, in units of its half size
PAD_VALUE = 110              # grey of the border added where a crop leaves the frame
MIN_TRACK = 7                # shorter tracks make the zero-padded 13-frame median filter return 0


@dataclass(frozen=True)
class Track:
    """One face over consecutive frames ``first .. first + len(boxes) - 1``; boxes x1, y1, x2, y2 (float),
    interpolated where the detector missed the face."""

    first: int
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def link_tracks(detections: list[np.ndarray]) -> list[Track]:
    """Link per-frame boxes (each an (k, 4) array) into tracks, in the order their first face appears.

    A track starts at the earliest face not yet used and takes, frame by frame, the unused face that
    overlaps its last box best (IoU above 0.5); it ends after 25 frames without one.
    """
    unused = [list(range(len(d))) for d in detections]
    tracks = []
    while True:
        start = next((i for i, u in enumerate(unused) if u), None)
        if start is None:
            return tracks
        frames, boxes = [start], [detections[start][unused[start].pop(0)]]
        for i in range(start + 1, len(detections)):
            if i - frames[-1] > MAX_MISSED:
                break
            overlaps = iou(detections[i][unused[i]].reshape(-1, 4), boxes[-1][None])[:, 0] if unused[i] else []
            best = max(zip(overlaps, unused[i]), default=(0.0, -1))
            if best[0] > IOU_THRESHOLD:
                unused[i].remove(best[1])
                frames.append(i)
                boxes.append(detections[i][best[1]])
        tracks.append(_interpolate(np.asarray(frames), np.asarray(boxes, np.float64)))


def _interpolate(frames: np.ndarray, boxes: np.ndarray) -> Track:
    every = np.arange(frames[0], frames[-1] + 1)
    return Track(int(frames[0]), np.stack([np.interp(every, frames, boxes[:, c]) for c in range(4)], axis=1))


def scorable(tracks: list[Track]) -> list[Track]:
    """The tracks long enough to score (:data:`MIN_TRACK` frames or more), in their order."""
    return [t for t in tracks if len(t) >= MIN_TRACK]


def crop_windows(track: Track) -> np.ndarray:
    """(n, 3) crop centre x, centre y and half size per frame, each median-filtered over 13 frames
    (zero-padded at the ends, as the reference)."""
    b = track.boxes
    half = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([median_filter(v, SMOOTH_KERNEL) for v in (cx, cy, half)], axis=1)


def crop_face(frame: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """The 224x224 crop around a face: ``half`` above the centre, ``half * 1.8`` below, ``half * 1.4``
    each side; rows and columns are those of the reference's crop of the frame padded with grey."""
    pad = int(half * (1 + 2 * CROP_SCALE))
    h, w = frame.shape[:2]
    # bounds in the padded frame (truncated as the reference does), clipped to it as slicing does
    y0, y1 = int(cy + pad - half), int(cy + pad + half * (1 + 2 * CROP_SCALE))
    x0, x1 = int(cx + pad - half * (1 + CROP_SCALE)), int(cx + pad + half * (1 + CROP_SCALE))
    y0, y1 = min(max(y0, 0), h + 2 * pad), min(max(y1, 0), h + 2 * pad)
    x0, x1 = min(max(x0, 0), w + 2 * pad), min(max(x1, 0), w + 2 * pad)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty face crop at centre ({cx:.1f}, {cy:.1f}), half size {half:.1f}")
    out = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, np.uint8)
    # the part of the window inside the frame, in frame coordinates
    fy0, fy1 = max(y0 - pad, 0), min(y1 - pad, h)
    fx0, fx1 = max(x0 - pad, 0), min(x1 - pad, w)
    if fy1 > fy0 and fx1 > fx0:
        out[fy0 + pad - y0:fy1 + pad - y0, fx0 + pad - x0:fx1 + pad - x0] = frame[fy0:fy1, fx0:fx1]
    return cv2.resize(out, (CROP, CROP))


def crop_tracks(frames: Iterable[np.ndarray], tracks: list[Track], outs: list[np.ndarray]) -> None:
    """Write the crops of each of ``tracks`` into its ``outs`` array (len(track), 224, 224, 3), reading
    ``frames`` (all the video's frames, in order) once."""
    windows = [crop_windows(t) for t in tracks]
    end = max((t.first + len(t) for t in tracks), default=0)
    for i, frame in enumerate(frames):
        if i >= end:
            break
        for track, win, out in zip(tracks, windows, outs):
            k = i - track.first
            if 0 <= k < len(track):
                out[k] = crop_face(frame, *win[k])
