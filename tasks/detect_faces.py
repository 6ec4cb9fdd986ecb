"""The detect_faces stage: every face in every frame of the video, and the shot cuts, keyed by the
video's content alone (a new audio track for the same video skips detection)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from core.media import VideoInfo, iter_frames
from core.options import RunOptions
from core.products import FaceDetections, Job
from core.progress import Progress
from core.stage import Stage
from core.storage import local_copy
from models.face_detection import CenterFaceDetector, main_face
from models.face_track import Detections

DETECT_MAX_SIDE = 320  # detection input size, doubled for small faces (models.face_detection)
# mean absolute difference of 64x64 grey thumbnails that starts a new shot: consecutive frames of the
# real talking-face clips differ by at most 1.5, two different clips by 65
CUT_DIFF = 20.0


def thumbnail(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (64, 64), interpolation=cv2.INTER_AREA
                      ).astype(np.float32)


def is_cut(previous: np.ndarray | None, current: np.ndarray) -> bool:
    """Whether ``current`` (a :func:`thumbnail`) starts a new shot after ``previous``."""
    return previous is not None and float(np.abs(current - previous).mean()) > CUT_DIFF


def detect_faces(info: VideoInfo, detector: str, detect_max_side: int = DETECT_MAX_SIDE, device=None,
                 frames: Iterable[np.ndarray] | None = None) -> Detections:
    """Run the detector over every frame of ``info`` (or over ``frames``, already decoded) and find the
    shot cuts (one decoding pass)."""
    centerface = CenterFaceDetector(max_side=detect_max_side)
    s3fd = None
    if detector == "s3fd":
        from models.loading import get_model

        s3fd, dev = get_model("s3fd", "s3fd-619a316812.pth", device)
    elif detector != "centerface":
        raise ValueError(f"unknown detector {detector!r} (centerface or s3fd)")

    frame_idx, boxes, landmarks, scores, ref_boxes, cuts = [], [], [], [], [], []
    progress = Progress("face detection", info.n_frames)
    n, thumb = 0, None
    for i, frame in enumerate(iter_frames(info) if frames is None else frames):
        previous, thumb = thumb, thumbnail(frame)
        if is_cut(previous, thumb):
            cuts.append(i)
        faces = centerface(frame)
        ref = np.full(4, np.nan, np.float32)
        k = main_face(faces, frame.shape)
        if s3fd is not None and k is not None:
            ref = _s3fd_box(s3fd, frame, faces[k].box, dev).astype(np.float32)
        for f in faces:
            frame_idx.append(i)
            boxes.append(f.box)
            landmarks.append(f.landmarks)
            scores.append(f.score)
        ref_boxes.append(ref)
        n = i + 1
        progress.update()
    return Detections(n, np.asarray(frame_idx, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(landmarks, np.float32).reshape(-1, 5, 2), np.asarray(scores, np.float32),
                      np.asarray(ref_boxes, np.float32).reshape(-1, 4), np.asarray(cuts, np.int64))


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


def _key_inputs(job: Job, opts: RunOptions) -> dict:
    """What detection depends on: the video's content and the detector settings, not the audio."""
    from models.checkpoint import resolve_device
    from models.weights import require, sha256_file

    parts = {"video": job.video_sha256, "detector": opts.detector, "max_side": DETECT_MAX_SIDE}
    if opts.detector == "s3fd":
        parts["weights"] = sha256_file(require("s3fd-619a316812.pth"))
        parts["device"] = resolve_device(opts.device).type
    return parts


STAGE = Stage("detect_faces", version="2", product=FaceDetections, key_inputs=_key_inputs)


@STAGE.task
def detect_faces_task(job: Job, opts: RunOptions, work_root: str, refresh: bool = False) -> FaceDetections:
    def produce(out_dir: Path) -> FaceDetections:
        with local_copy(job.video, "video") as v:
            dets = detect_faces(job.video_info.at(v), opts.detector, DETECT_MAX_SIDE, opts.device)
        return FaceDetections(detections=str(dets.save(out_dir / "detections.npz")), n_frames=dets.n_frames,
                              faces=int(len(dets.frame)), cuts=int(len(dets.cuts)))

    return STAGE.run(work_root, produce, refresh, job=job, opts=opts)
