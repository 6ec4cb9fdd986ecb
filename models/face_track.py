"""Faces of a video as data: every detection (per video content), and the face track built from them
(the lip-sync box and the alignment landmarks per frame), each saved as an ``.npz`` file.

The track is saved as ``faces.npz`` beside the synced video so the enhancer reuses it instead of
detecting again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import NoFaceError
from core.media import VideoInfo
from models.face_detection import Face, main_face, pad_box, smooth_centered, smooth_forward


def _save_npz(path: str | Path, **arrays) -> Path:
    """Write ``arrays`` to ``path`` under a temporary name, then move it: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


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
        return _save_npz(path, present=self.present, boxes=self.boxes, landmarks=self.landmarks,
                         others=self.others)

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


@dataclass
class Detections:
    """Every face the detector found in every frame of a video, before any choice or padding: what
    depends on the video's content alone, cached per video so a new audio track skips detection.

    ``ref_boxes`` holds, per frame, the reference detector's (S3FD) box for the main face when it was
    asked for, else NaN.
    """

    n_frames: int
    frame: np.ndarray      # (m,) int64: frame index of each face
    boxes: np.ndarray      # (m, 4) float32
    landmarks: np.ndarray  # (m, 5, 2) float32
    scores: np.ndarray     # (m,) float32, best first within a frame
    ref_boxes: np.ndarray  # (n_frames, 4) float32

    def save(self, path: str | Path) -> Path:
        return _save_npz(path, n_frames=self.n_frames, frame=self.frame, boxes=self.boxes,
                         landmarks=self.landmarks, scores=self.scores, ref_boxes=self.ref_boxes)

    @classmethod
    def load(cls, path: str | Path) -> "Detections":
        with np.load(path) as z:
            return cls(int(z["n_frames"]), z["frame"], z["boxes"], z["landmarks"], z["scores"], z["ref_boxes"])

    def faces_in(self, index: int) -> list[Face]:
        # faces are stored in frame order: a binary search, not a scan per frame (long videos)
        lo, hi = np.searchsorted(self.frame, [index, index + 1])
        return [Face(self.boxes[r], self.landmarks[r], float(self.scores[r])) for r in range(lo, hi)]


def build_track(dets: Detections, info: VideoInfo, *, pads: tuple[int, int, int, int], smooth: bool,
                on_no_face: str) -> FaceTrack:
    """Choose the main face per frame, pad and smooth its box: the track the later stages use."""
    present, boxes, landmarks, others = [], [], [], []
    shape = (info.height, info.width)
    for i in range(dets.n_frames):
        faces = dets.faces_in(i)
        k = main_face(faces, shape)
        if k is None:
            if on_no_face == "fail":
                raise NoFaceError(
                    f"video {info.path}: no face detected in the frame at {i / float(info.fps):.2f} s "
                    f"(frame {i}); every frame needs a face with --on-no-face fail")
            present.append(False)
            boxes.append(np.zeros(4))
            landmarks.append(np.zeros((5, 2), np.float32))
            continue
        box = faces[k].box if np.isnan(dets.ref_boxes[i]).any() else dets.ref_boxes[i]
        # the reference truncates detector boxes to ints before padding and smoothing
        boxes.append(pad_box(np.trunc(box), pads, shape))
        landmarks.append(faces[k].landmarks)
        present.append(True)
        others += [[i, *f.landmarks.reshape(-1)] for j, f in enumerate(faces) if j != k]
    present_a = np.asarray(present, bool)
    boxes_a = np.trunc(np.asarray(boxes, np.float64)).astype(np.int64).reshape(-1, 4)
    lms_a = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    if smooth:
        boxes_a = smooth_forward(boxes_a, present_a, window=5)
        lms_a = smooth_centered(lms_a, present_a, radius=1)
    # a box too small to crop (a face at the very edge) is treated as no face
    present_a &= (boxes_a[:, 2] - boxes_a[:, 0] >= 2) & (boxes_a[:, 3] - boxes_a[:, 1] >= 2)
    others_a = np.asarray(others, np.float32).reshape(-1, 11)
    return FaceTrack(present_a, boxes_a, lms_a.astype(np.float32), others_a)
