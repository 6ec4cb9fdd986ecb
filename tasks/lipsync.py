"""Stage 1: audio + video -> low-quality synced video (lossless FFV1 + FLAC) and the face track."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from core.media import FrameWriter, VideoInfo, decode_audio, iter_frames, probe_audio, probe_video, read_still
from core.prefect_task import stage_task
from core.progress import Progress, get_logger
from core.storage import local_copy
from core.workarea import WorkArea, run_stage
from models.batching import split_on_oom
from models.audio import frame_count, mel_windows, melspectrogram
from models.precision import PRECISIONS, autocast, resolve_precision
from models.wav2lip import FACE_SIZE
from tasks.faces import Detections, FaceTrack, build_track, detect_faces


@dataclass(frozen=True)
class LipsyncOptions:
    checkpoint: str = "wav2lip_gan.pth"
    still_fps: float = 25.0
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    smooth: bool = True
    on_no_face: str = "pass"          # "pass": frame unchanged; "fail": abort
    batch_size: int = 0               # 0: 16 on CPU (measured fastest: 26 ms/frame bf16 vs 40 at 128), 128 on CUDA
    detector: str = "centerface"
    detect_max_side: int = 320       # detection input size, doubled for small faces
    precision: str = "auto"          # see models.precision
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise ValueError("batch_size must be 0 (automatic) or more")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class SyncedVideo:
    """The stage's product: where it is and what the later stages need to know."""

    video: str
    faces: str
    fps_num: int
    fps_den: int
    n_frames: int       # output frames (cover the audio)
    n_source: int       # frames of the input video (output frame i shows source frame i % n_source)
    width: int
    height: int

    @property
    def fps(self) -> float:
        return self.fps_num / self.fps_den

    def to_dict(self) -> dict:
        return asdict(self)


def lipsync(audio: str, video: str, out_dir: str | Path, opts: LipsyncOptions = LipsyncOptions(),
            detections: str | Path | None = None) -> SyncedVideo:
    """Run Wav2Lip over ``video`` driven by ``audio``; write ``synced.mkv`` and ``faces.npz`` in ``out_dir``.

    ``detections``: the video's saved :class:`Detections` (from :func:`detect_faces`); detected here
    when not given.
    """
    from models.loading import get_model

    log = get_logger()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = probe_video(video, still_fps=opts.still_fps)
    probe_audio(audio)
    if info.vfr:
        log.info("video %s has a variable frame rate: resampled to a constant %.3f fps by its timestamps",
                 video, float(info.fps))
    wav = decode_audio(audio)
    mel = melspectrogram(wav)
    n_out = frame_count(len(wav), info.fps)
    windows = mel_windows(mel, n_out, info.fps)
    model, _, device = get_model("wav2lip", opts.checkpoint, opts.device)
    batch_size = opts.batch_size or (128 if device.type == "cuda" else 16)

    if detections is None:
        dets = detect_faces(info, opts.detector, opts.detect_max_side, opts.device)
    else:
        dets = Detections.load(detections)
        if dets.n_frames != info.n_frames:
            raise RuntimeError(f"face detections of {video} cover {dets.n_frames} frames, the video has "
                               f"{info.n_frames}: stale detections")
    track = build_track(dets, info, opts.pads, opts.smooth, opts.on_no_face)
    n_src = track.n_frames
    if not track.present.any():
        log.warning("video %s: no face found in any frame; the output shows it unchanged", video)
    log.info("lip-sync: %d source frames -> %d output frames at %.3f fps (%s, %s)", n_src, n_out,
             float(info.fps), device, resolve_precision(opts.precision, device))

    faces_path = track.save(out_dir / "faces.npz")
    progress = Progress("lip-sync", n_out)
    out_path = out_dir / "synced.mkv"
    with FrameWriter(out_path, info.width, info.height, info.fps, codec="ffv1", audio=audio,
                     audio_codec="flac") as writer:
        batch: list[tuple[np.ndarray, int]] = []
        for i, frame in enumerate(_looped_frames(info, n_src, n_out)):
            batch.append((frame, i))
            if len(batch) == batch_size:
                _sync_batch(model, device, batch, track, windows, n_src, writer, opts.precision)
                progress.update(len(batch))
                batch = []
        if batch:
            _sync_batch(model, device, batch, track, windows, n_src, writer, opts.precision)
            progress.update(len(batch))
    if writer.count != n_out:
        raise RuntimeError(f"lip-sync wrote {writer.count} frames, expected {n_out}")
    return SyncedVideo(str(out_path), str(faces_path), info.fps.numerator, info.fps.denominator, n_out,
                       n_src, info.width, info.height)


def _looped_frames(info: VideoInfo, n_src: int, n_out: int) -> Iterator[np.ndarray]:
    """Frames 0..n_out-1 where output frame i is source frame i mod n_src (decoding again per loop)."""
    if info.is_still:
        still = read_still(info.path)
        for _ in range(n_out):
            yield still
        return
    if n_src < 1:
        raise ValueError(f"video {info.path}: no frames to loop over")
    emitted = 0
    while emitted < n_out:
        before = emitted
        for j, frame in enumerate(iter_frames(info)):
            if j >= n_src or emitted >= n_out:
                break
            yield frame
            emitted += 1
        if emitted == before:
            raise RuntimeError(f"video {info.path}: decoding gave no frames on a second pass")


def prepare_faces(crops: list[np.ndarray]) -> torch.Tensor:
    """(B, 6, 96, 96) model input: the face with its lower half blanked, then the face, in [0, 1]."""
    faces = np.stack([cv2.resize(c, (FACE_SIZE, FACE_SIZE)) for c in crops])
    masked = faces.copy()
    masked[:, FACE_SIZE // 2:] = 0
    x = np.concatenate([masked, faces], axis=3).astype(np.float32) / 255.0
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _sync_batch(model, device, batch, track: FaceTrack, windows: np.ndarray, n_src: int,
                writer: FrameWriter, precision: str) -> None:
    work = [(k, idx % n_src) for k, (_, idx) in enumerate(batch) if track.present[idx % n_src]]
    frames = [f for f, _ in batch]
    if work:
        crops, boxes = [], []
        for k, src in work:
            x1, y1, x2, y2 = (int(v) for v in track.boxes[src])
            crops.append(frames[k][y1:y2, x1:x2])
            boxes.append((x1, y1, x2, y2))
        faces = prepare_faces(crops).to(device)
        mels = torch.from_numpy(windows[[batch[k][1] for k, _ in work]][:, None]).to(device)
        with torch.inference_mode(), autocast(device, precision):
            pred = split_on_oom(model, mels, faces)
        pred = (pred.float().cpu().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
        for (k, _), p, (x1, y1, x2, y2) in zip(work, pred, boxes):
            out = frames[k].copy()
            out[y1:y2, x1:x2] = cv2.resize(p, (x2 - x1, y2 - y1))
            frames[k] = out
    for f in frames:
        writer.write(f)


VERSION = "1"
DETECT_VERSION = "1"


def _detect_parts(job: dict, opts: LipsyncOptions, **_) -> dict:
    """What detection depends on: the video's content and the detector settings, not the audio."""
    from models.checkpoint import resolve_device
    from models.weights import require, sha256_file

    parts = {"video": job["video_sha256"], "detector": opts.detector, "max_side": opts.detect_max_side}
    if opts.detector == "s3fd":
        parts["weights"] = sha256_file(require("s3fd-619a316812.pth"))
        parts["device"] = resolve_device(opts.device).type
    return parts


@stage_task("detect_faces", stage="faces", version=DETECT_VERSION, parts=_detect_parts)
def detect_faces_task(job: dict, opts: LipsyncOptions, work_root: str, refresh: bool = False) -> dict:
    """Face detection over the video, keyed by the video's content: reused whatever the audio."""
    def produce(out_dir: Path) -> dict:
        with local_copy(job["video"], "video") as v:
            info = probe_video(v, still_fps=opts.still_fps)
            dets = detect_faces(info, opts.detector, opts.detect_max_side, opts.device)
        return {"detections": str(dets.save(out_dir / "detections.npz")), "n_frames": dets.n_frames,
                "faces": int(len(dets.frame))}

    return run_stage(WorkArea(work_root), "faces", DETECT_VERSION, _detect_parts(job, opts), produce, refresh)


def _parts(job: dict, dets: dict, opts: LipsyncOptions, **_) -> dict:
    from models.checkpoint import resolve_device
    from models.precision import resolve_precision
    from models.weights import require, sha256_file

    device = resolve_device(opts.device)
    return {"audio": job["audio_sha256"], "video": job["video_sha256"], "detections": dets["key"],
            "opts": asdict(opts), "weights": sha256_file(require(opts.checkpoint)), "device": device.type,
            "precision": resolve_precision(opts.precision, device)}


@stage_task("lipsync", stage="lipsync", version=VERSION, parts=_parts)
def lipsync_task(job: dict, dets: dict, opts: LipsyncOptions, work_root: str, refresh: bool = False) -> dict:
    """Lip-sync stage, content-keyed: reused when audio, video, options and weights are unchanged."""
    def produce(out_dir: Path) -> dict:
        with local_copy(job["audio"], "audio") as a, local_copy(job["video"], "video") as v, \
                local_copy(dets["detections"], "face detections") as d:
            return lipsync(a, v, out_dir, opts, detections=d).to_dict()

    return run_stage(WorkArea(work_root), "lipsync", VERSION, _parts(job, dets, opts), produce, refresh)
