"""The lipsync stage: audio + video + face detections -> Wav2Lip's synced video (lossless FFV1 + FLAC)
and the face track it used (the enhancer aligns faces on it)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from core.errors import InputError
from core.media import AudioInfo, FrameWriter, VideoInfo, decode_audio, iter_frames, read_still
from core.options import RunOptions
from core.products import FaceDetections, Job, SyncedVideo
from core.progress import Progress, get_logger
from core.stage import Stage
from core.storage import local_copy
from models.audio import frame_count, mel_windows, melspectrogram
from models.batching import split_on_oom
from models.face_track import Detections, FaceTrack, build_track
from models.precision import autocast, resolve_precision
from models.wav2lip import FACE_SIZE


def lipsync(audio: AudioInfo, video: VideoInfo, detections: str | Path, out_dir: str | Path,
            opts: RunOptions = RunOptions()) -> SyncedVideo:
    """Run Wav2Lip over ``video`` driven by ``audio`` (both probed, at local paths) on the faces of
    ``detections`` (a saved :class:`Detections`); write ``synced.mkv`` and ``faces.npz`` in ``out_dir``."""
    from models.loading import get_model

    log = get_logger()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if video.vfr:
        log.info("video %s has a variable frame rate: resampled to a constant %.3f fps by its timestamps",
                 video.path, float(video.fps))
    wav = decode_audio(audio.path, channels=audio.channels)
    mel = melspectrogram(wav)
    n_out = frame_count(len(wav), video.fps)
    windows = mel_windows(mel, n_out, video.fps)
    model, device = get_model("wav2lip", opts.checkpoint, opts.device)
    batch_size = opts.batch_size or (128 if device.type == "cuda" else 16)

    dets = Detections.load(detections)
    if dets.n_frames != video.n_frames:
        raise RuntimeError(f"face detections of {video.path} cover {dets.n_frames} frames, the video has "
                           f"{video.n_frames}: stale detections")
    track = build_track(dets, video, pads=opts.pads, smooth=opts.smooth, on_no_face=opts.on_no_face)
    n_src = track.n_frames
    if not track.present.any() and len(dets.frame) and min(opts.pads) < 0:
        raise InputError(f"pads {' '.join(map(str, opts.pads))}: they leave no face box in any frame where a face "
                         f"was found; use smaller negative pads")
    if not track.present.any():
        log.warning("video %s: no face found in any frame; the output shows it unchanged", video.path)
    log.info("lip-sync: %d source frames -> %d output frames at %.3f fps (%s, %s)", n_src, n_out,
             float(video.fps), device, resolve_precision(opts.precision, device))

    faces_path = track.save(out_dir / "faces.npz")
    progress = Progress("lip-sync", n_out)
    out_path = out_dir / "synced.mkv"
    with FrameWriter(out_path, video.width, video.height, video.fps, codec="ffv1", audio=audio.path,
                     audio_codec="flac") as writer:
        batch: list[tuple[np.ndarray, int]] = []
        for i, frame in enumerate(_looped_frames(video, n_src, n_out)):
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
    return SyncedVideo(video=str(out_path), face_track=str(faces_path), fps_num=video.fps_num,
                       fps_den=video.fps_den, n_frames=n_out, n_source=n_src, width=video.width, height=video.height,
                       sar_num=video.sar_num, sar_den=video.sar_den)


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


# what the synced frames depend on among the options (the rest belong to other stages)
KEY_OPTIONS = ("checkpoint", "still_fps", "pads", "smooth", "on_no_face", "batch_size", "detector", "precision",
               "device")


def _key_inputs(job: Job, detections: FaceDetections, opts: RunOptions) -> dict:
    from models.checkpoint import resolve_device
    from models.weights import require, sha256_file

    device = resolve_device(opts.device)
    return {"audio": job.audio_sha256, "video": job.video_sha256, "detections": detections.key,
            "opts": opts.model_dump(include=set(KEY_OPTIONS)), "weights": sha256_file(require(opts.checkpoint)),
            "device": device.type, "precision": resolve_precision(opts.precision, device)}


STAGE = Stage("lipsync", version="2", product=SyncedVideo, key_inputs=_key_inputs)


@STAGE.task
def lipsync_task(job: Job, detections: FaceDetections, opts: RunOptions, work_root: str,
                 refresh: bool = False) -> SyncedVideo:
    """Reused when audio, video, detections, options and weights are unchanged."""
    def produce(out_dir: Path) -> SyncedVideo:
        with local_copy(job.audio, "audio") as a, local_copy(job.video, "video") as v, \
                local_copy(detections.detections, "face detections") as d:
            return lipsync(job.audio_info.model_copy(update={"path": a}), job.video_info.at(v), d, out_dir, opts)

    return STAGE.run(work_root, produce, refresh, job=job, detections=detections, opts=opts)
