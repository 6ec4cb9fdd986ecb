"""The detect_faces stage: every face in every frame of the video, keyed by the video's content alone
(a new audio track for the same video skips detection)."""
from __future__ import annotations

from pathlib import Path

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


def detect_faces(info: VideoInfo, detector: str, detect_max_side: int = DETECT_MAX_SIDE,
                 device=None) -> Detections:
    """Run the detector over every frame of ``info`` (one decoding pass)."""
    centerface = CenterFaceDetector(max_side=detect_max_side)
    s3fd = None
    if detector == "s3fd":
        from models.loading import get_model

        s3fd, dev = get_model("s3fd", "s3fd-619a316812.pth", device)
    elif detector != "centerface":
        raise ValueError(f"unknown detector {detector!r} (centerface or s3fd)")

    frame_idx, boxes, landmarks, scores, ref_boxes = [], [], [], [], []
    progress = Progress("face detection", info.n_frames)
    n = 0
    for i, frame in enumerate(iter_frames(info)):
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
                      np.asarray(ref_boxes, np.float32).reshape(-1, 4))


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


STAGE = Stage("detect_faces", version="1", product=FaceDetections, key_inputs=_key_inputs)


@STAGE.task
def detect_faces_task(job: Job, opts: RunOptions, work_root: str, refresh: bool = False) -> FaceDetections:
    def produce(out_dir: Path) -> FaceDetections:
        with local_copy(job.video, "video") as v:
            dets = detect_faces(job.video_info.at(v), opts.detector, DETECT_MAX_SIDE, opts.device)
        return FaceDetections(detections=str(dets.save(out_dir / "detections.npz")), n_frames=dets.n_frames,
                              faces=int(len(dets.frame)))

    return STAGE.run(work_root, produce, refresh, job=job, opts=opts)
