"""Face tracks: one detection pass over a video, the lip-sync box and the alignment landmarks per frame.

Saved as ``faces.npz`` beside the synced video so the enhancer reuses them instead of detecting again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import NoFaceError
from core.media import VideoInfo, iter_frames
from core.progress import Progress
from models.face_detection import (CenterFaceDetector, main_face, pad_box, smooth_centered,
                                   smooth_forward)


@dataclass
class FaceTrack:
    """Per source frame: whether a face is used, its lip-sync box (ints) and its 5 landmarks.

    ``others`` lists the remaining faces as rows (frame index, 10 landmark coordinates): the
    enhancer restores them too, as GFPGAN restores every face in a frame.
    """

    present: np.ndarray    # (n,) bool
    boxes: np.ndarray      # (n, 4) int64: x1, y1, x2, y2 after pads and smoothing
    landmarks: np.ndarray  # (n, 5, 2) float32
    others: np.ndarray     # (m, 11) float32

    @property
    def n_frames(self) -> int:
        return len(self.present)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.stem}.part.npz")
        np.savez(tmp, present=self.present, boxes=self.boxes, landmarks=self.landmarks, others=self.others)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FaceTrack":
        with np.load(path) as z:
            return cls(z["present"], z["boxes"], z["landmarks"], z["others"])

    def faces_at(self, index: int) -> list[np.ndarray]:
        """All landmark sets (5, 2) to restore in source frame ``index``, the main face first."""
        out = [self.landmarks[index]] if self.present[index] else []
        rows = self.others[self.others[:, 0] == index]
        out += [r[1:].reshape(5, 2) for r in rows]
        return out


def track_faces(info: VideoInfo, pads: tuple[int, int, int, int] = (0, 10, 0, 0), smooth: bool = True,
                on_no_face: str = "pass", detect_max_side: int = 640, detector: str = "centerface",
                device=None) -> FaceTrack:
    """Detect faces in every frame of ``info`` and build the track the later stages use."""
    centerface = CenterFaceDetector(max_side=detect_max_side)
    s3fd = None
    if detector == "s3fd":
        from models.loading import get_model

        s3fd, _, dev = get_model("s3fd", "s3fd-619a316812.pth", device)
    elif detector != "centerface":
        raise ValueError(f"unknown detector {detector!r} (centerface or s3fd)")

    present, boxes, landmarks, others = [], [], [], []
    progress = Progress("face detection", info.n_frames)
    shape = (info.height, info.width)
    for i, frame in enumerate(iter_frames(info)):
        faces = centerface(frame)
        k = main_face(faces, frame.shape)
        if k is None:
            if on_no_face == "fail":
                raise NoFaceError(
                    f"video {info.path}: no face detected in the frame at {i / float(info.fps):.2f} s "
                    f"(frame {i}); every frame needs a face with --on-no-face fail")
            present.append(False)
            boxes.append(np.zeros(4))
            landmarks.append(np.zeros((5, 2), np.float32))
        else:
            box = faces[k].box
            if s3fd is not None:
                box = _s3fd_box(s3fd, frame, box, dev)
            # the reference truncates detector boxes to ints before padding and smoothing
            boxes.append(pad_box(np.trunc(box), pads, shape))
            landmarks.append(faces[k].landmarks)
            present.append(True)
            others += [[i, *f.landmarks.reshape(-1)] for j, f in enumerate(faces) if j != k]
        progress.update()
    present_a = np.asarray(present, bool)
    boxes_a = np.trunc(np.asarray(boxes, np.float64)).astype(np.int64)
    lms_a = np.asarray(landmarks, np.float32)
    if smooth:
        boxes_a = smooth_forward(boxes_a, present_a, window=5)
        lms_a = smooth_centered(lms_a, present_a, radius=1)
    # a box too small to crop (a face at the very edge) is treated as no face
    present_a &= (boxes_a[:, 2] - boxes_a[:, 0] >= 2) & (boxes_a[:, 3] - boxes_a[:, 1] >= 2)
    others_a = np.asarray(others, np.float32).reshape(-1, 11)
    return FaceTrack(present_a, boxes_a, lms_a.astype(np.float32), others_a)


def _s3fd_box(net, frame: np.ndarray, fallback: np.ndarray, device) -> np.ndarray:
    """The reference detector's box for the face CenterFace chose (best overlap), else CenterFace's."""
    from models.s3fd import s3fd_detect

    dets = s3fd_detect(net, [frame], device)[0]
    if len(dets) == 0:
        return fallback
    x1 = np.maximum(dets[:, 0], fallback[0])
    y1 = np.maximum(dets[:, 1], fallback[1])
    x2 = np.minimum(dets[:, 2], fallback[2])
    y2 = np.minimum(dets[:, 3], fallback[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    best = int(np.argmax(inter))
    return dets[best, :4] if inter[best] > 0 else fallback
