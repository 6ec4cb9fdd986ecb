"""The lipsync stage: audio + video + face detections -> Wav2Lip's synced video (lossless video + FLAC)
and the face track it used (the enhancer aligns faces on it)."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

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
from models.batching import default_batch, split_on_oom
from models.face_track import Detections, FaceTrack, build_plan, source_index, track_faces
from models.precision import autocast, resolve_precision
from models.wav2lip import FACE_SIZE


def lipsync(audio: AudioInfo, video: VideoInfo, detections: str | Path, out_dir: str | Path,
            opts: RunOptions = RunOptions()) -> SyncedVideo:
    """Run Wav2Lip over ``video`` driven by ``audio`` (both probed, at local paths) on the speaker's face
    in ``detections`` (a saved :class:`Detections`); write ``synced.mkv`` and ``faces.npz`` in ``out_dir``."""
    from models.loading import get_wav2lip

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
    model, device = get_wav2lip(opts.checkpoint, opts.device, opts.engine, opts.precision)
    batch_size = opts.batch_size or default_batch("wav2lip", device)

    dets = Detections.load(detections)
    if dets.n_frames != video.n_frames:
        raise RuntimeError(f"face detections of {video.path} cover {dets.n_frames} frames, the video has "
                           f"{video.n_frames}: stale detections")
    tracks = track_faces(dets, float(video.fps), opts.smooth)
    plan = build_plan(tracks, video, pads=opts.pads, face=opts.face, smooth=opts.smooth,
                      on_no_face=opts.on_no_face, box=opts.box)
    n_src = plan.n_frames
    if not plan.sync.any() and len(dets.frame) and min(opts.pads) < 0:
        raise InputError(f"--pads {' '.join(map(str, opts.pads))}: they leave no face box in any frame where a "
                         f"face was found; use smaller negative pads")
    if not plan.sync.any():
        log.warning("video %s: no face found in any frame; the output shows it unchanged", video.path)
    log.info("lip-sync: %d source frames -> %d output frames at %.3f fps (%s, %s, %s); %d faces in %d tracks, "
             "%d frames without a face to lip-sync", n_src, n_out, float(video.fps), device,
             resolve_precision(opts.precision, device), getattr(model, "engine", "torch"), len(dets.frame),
             tracks.n_tracks, int((~plan.sync).sum()))

    faces_path = plan.save(out_dir / "faces.npz")
    progress = Progress("lip-sync", n_out)
    out_path = out_dir / "synced.mkv"
    with FrameWriter(out_path, video.width, video.height, video.fps, codec="lossless", audio=audio.path,
                     audio_codec="flac") as writer, SourceFrames(video, n_out, opts.loop, out_dir) as source, \
            ThreadPoolExecutor(1, "lipsync-decode") as decoder, ThreadPoolExecutor(1, "lipsync-encode") as encoder:
        # the network keeps the cores busy while one thread decodes the next batch and another pastes and
        # encodes the previous one (ffmpeg's pipes alone hold less than a frame, so they would run in series)
        def read(start: int) -> list[tuple[np.ndarray, int, int]]:
            return [(frame, i, src) for i in range(start, min(start + batch_size, n_out))
                    for frame, src in [source.frame(i)]]

        def write(batch: list[tuple[np.ndarray, int, int]], prediction: Prediction) -> None:
            writer.write_all(paste_batch(batch, prediction, opts.mask))

        ahead = decoder.submit(read, 0)
        behind, done = None, 0
        for start in range(0, n_out, batch_size):
            batch = ahead.result()
            if start + batch_size < n_out:
                ahead = decoder.submit(read, start + batch_size)
            prediction = predict_batch(model, device, batch, plan, windows, opts)
            if behind is not None:
                behind.result()
                progress.update(start - done)  # here, in the run's thread: Prefect's logger needs its context
                done = start
            behind = encoder.submit(write, batch, prediction)
        if behind is not None:
            behind.result()
            progress.update(n_out - done)
    if writer.count != n_out:
        raise RuntimeError(f"lip-sync wrote {writer.count} frames, expected {n_out}")
    return SyncedVideo(video=str(out_path), face_track=str(faces_path), fps_num=video.fps_num,
                       fps_den=video.fps_den, n_frames=n_out, n_source=n_src, loop=opts.loop, width=video.width,
                       height=video.height, sar_num=video.sar_num, sar_den=video.sar_den,
                       tracks=tracks.n_tracks, frames_without_face=int((~plan.sync).sum()))


class SourceFrames:
    """Source frames in output order (:func:`source_index`). A video shorter than the audio is decoded
    once into an uncompressed spool file beside the output (deleted on exit), so playing it backward
    costs no second decode and no memory."""

    def __init__(self, info: VideoInfo, n_out: int, loop: str, spool_dir: Path) -> None:
        self.info, self.n_out, self.loop = info, n_out, loop
        self.still = read_still(info.path) if info.is_still else None
        self.frames = None if info.is_still else iter_frames(info)
        self.spool_path = spool_dir / ".source_frames.raw"
        self.spool: np.ndarray | None = None
        if self.still is None and n_out > info.n_frames:
            shape = (info.n_frames, info.height, info.width, 3)
            self.spool = np.lib.format.open_memmap(self.spool_path, mode="w+", dtype=np.uint8, shape=shape)
        self.decoded = 0

    def frame(self, i: int) -> tuple[np.ndarray, int]:
        """Output frame ``i``'s source frame and its index."""
        if self.still is not None:
            return self.still, 0
        src = source_index(i, self.info.n_frames, self.loop)
        while self.decoded <= src:
            frame = next(self.frames, None)
            if frame is None:
                raise RuntimeError(f"video {self.info.path}: decoding ended at frame {self.decoded}, the probe "
                                   f"counted {self.info.n_frames}")
            if self.spool is not None:
                self.spool[self.decoded] = frame
            self.decoded += 1
            self.last = frame
        return (self.last if self.spool is None else np.asarray(self.spool[src])), src

    def __enter__(self) -> "SourceFrames":
        return self

    def __exit__(self, *exc) -> None:
        if self.frames is not None:
            self.frames.close()
        self.spool = None
        self.spool_path.unlink(missing_ok=True)


def prepare_faces(crops: list[np.ndarray]) -> torch.Tensor:
    """(B, 6, 96, 96) model input: the face with its lower half blanked, then the face, in [0, 1]."""
    faces = np.stack([cv2.resize(c, (FACE_SIZE, FACE_SIZE)) for c in crops])
    masked = faces.copy()
    masked[:, FACE_SIZE // 2:] = 0
    x = np.concatenate([masked, faces], axis=3).astype(np.float32) / 255.0
    # channels-last memory, as the reference feeds it: the convolutions take the same kernels
    return torch.from_numpy(x).permute(0, 3, 1, 2)


MOUTH_TOP = 0.5     # the generated region starts halfway down the box (Wav2Lip redraws the lower half)
FEATHER = 0.1       # the mask fades to the source over this share of the box


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    t = np.clip(d / width, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)  # smoothstep: no kink where the fade starts or ends


@functools.lru_cache(maxsize=64)
def _mouth_factors(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mouth_mask`'s separable factors: (h, 1) over the rows (above the mouth and bottom fades),
    (1, w) left and right fades."""
    f = max(1.0, FEATHER * min(height, width))
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    return _ramp(y - (MOUTH_TOP * height - f), f) * _ramp(height - y, f), _ramp(x, f), _ramp(width - x, f)


def mouth_mask(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) blend weights of the prediction in a face box and of the frame beneath (one minus it): 1 over
    the mouth and chin, fading to 0 at the box's sides and bottom and above the mouth, over a tenth of
    the box."""
    rows, left, right = _mouth_factors(height, width)
    mask = (rows * left * right).astype(np.float32)
    return mask, 1.0 - mask


def _blend_mouth(region: np.ndarray, face: np.ndarray) -> None:
    """``region`` (a face box of the frame, written in place) blended with ``face`` through
    :func:`mouth_mask`, computed only where the weight is strictly between 0 and 1: the rows above the
    mouth keep the frame, the rectangle of ones is the face (what the blend gives there, to the level)."""
    h, w = region.shape[:2]
    rows, left, right = _mouth_factors(h, w)
    live = np.flatnonzero(rows[:, 0] > 0)
    full_r, full_c = np.flatnonzero(rows[:, 0] == 1), np.flatnonzero((left[0] == 1) & (right[0] == 1))
    if not len(live):
        return
    r0 = live[0]
    if len(full_r) and len(full_c):
        (a, b), (c, d) = (full_r[0], full_r[-1] + 1), (full_c[0], full_c[-1] + 1)
        region[a:b, c:d] = face[a:b, c:d]
        strips = [(slice(r0, a), slice(0, w)), (slice(b, h), slice(0, w)), (slice(a, b), slice(0, c)),
                  (slice(a, b), slice(d, w))]
    else:
        strips = [(slice(r0, h), slice(0, w))]
    for rs, cs in strips:
        if rs.start >= rs.stop or cs.start >= cs.stop:
            continue
        # mouth_mask's product in its order, so the weights are the same floats
        alpha = (rows[rs] * left[:, cs] * right[:, cs]).astype(np.float32)
        region[rs, cs] = cv2.blendLinear(face[rs, cs], region[rs, cs], alpha, 1.0 - alpha)


def paste(frame: np.ndarray, prediction: np.ndarray, box: tuple[int, int, int, int], mask: str) -> np.ndarray:
    """A copy of ``frame`` with Wav2Lip's 96x96 ``prediction`` resized into ``box`` (x1, y1, x2, y2):
    the whole box (``box``, as the reference) or blended through :func:`mouth_mask` (``feather``)."""
    x1, y1, x2, y2 = box
    face = cv2.resize(prediction, (x2 - x1, y2 - y1))
    out = frame.copy()
    if mask == "box":
        out[y1:y2, x1:x2] = face
    else:
        _blend_mouth(out[y1:y2, x1:x2], face)
    return out


class Prediction(NamedTuple):
    """Wav2Lip's output for the frames of a batch that have a face box."""
    work: list[int]                            # positions in the batch
    boxes: list[tuple[int, int, int, int]]     # x1, y1, x2, y2 in each of those frames
    faces: np.ndarray                          # (len(work), 96, 96, 3) uint8 BGR


def predict_batch(model, device, batch: list[tuple[np.ndarray, int, int]], plan: FaceTrack, windows: np.ndarray,
                  opts: RunOptions) -> Prediction:
    """Wav2Lip on a batch of (frame, output index, source index): the planned boxes with each output
    frame's mel window."""
    work = [k for k, (_, _, src) in enumerate(batch) if plan.sync[src]]
    if not work:
        return Prediction([], [], np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8))
    boxes = [tuple(int(v) for v in plan.boxes[batch[k][2]]) for k in work]
    faces = prepare_faces([batch[k][0][y1:y2, x1:x2] for k, (x1, y1, x2, y2) in zip(work, boxes)]).to(device)
    mels = torch.from_numpy(windows[[batch[k][1] for k in work]][:, None]).to(device)
    with torch.inference_mode(), autocast(device, opts.precision):
        pred = split_on_oom(model, mels, faces)
    return Prediction(work, boxes, (pred.float().cpu().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8))


def paste_batch(batch: list[tuple[np.ndarray, int, int]], prediction: Prediction, mask: str) -> list[np.ndarray]:
    """The batch's frames with the predicted faces pasted in; frames without a box come back unchanged."""
    frames = [f for f, _, _ in batch]
    for k, face, box in zip(prediction.work, prediction.faces, prediction.boxes):
        frames[k] = paste(frames[k], face, box, mask)
    return frames


def sync_frames(model, device, batch: list[tuple[np.ndarray, int, int]], plan: FaceTrack, windows: np.ndarray,
                opts: RunOptions) -> list[np.ndarray]:
    """Lip-sync a batch of (frame, output index, source index): :func:`predict_batch`, then
    :func:`paste_batch`."""
    return paste_batch(batch, predict_batch(model, device, batch, plan, windows, opts), opts.mask)


# what the synced frames depend on among the options (the rest belong to other stages)
KEY_OPTIONS = ("still_fps", "pads", "smooth", "mask", "face", "loop", "box", "on_no_face", "batch_size", "detector",
               "precision", "device")


def _key_inputs(job: Job, detections: FaceDetections, opts: RunOptions) -> dict:
    from models.loading import network_key

    return {"audio": job.audio_sha256, "video": job.video_sha256, "detections": detections.key,
            "opts": opts.model_dump(include=set(KEY_OPTIONS)),
            **network_key(opts.checkpoint, "--checkpoint", opts.device, opts.engine, opts.precision)}


STAGE = Stage("lipsync", version="4", product=SyncedVideo, key_inputs=_key_inputs)


@STAGE.task
def lipsync_task(job: Job, detections: FaceDetections, opts: RunOptions, work_root: str,
                 refresh: bool = False) -> SyncedVideo:
    """Reused when audio, video, detections, options and weights are unchanged."""
    def produce(out_dir: Path) -> SyncedVideo:
        with local_copy(job.audio, "audio") as a, local_copy(job.video, "video") as v, \
                local_copy(detections.detections, "face detections") as d:
            return lipsync(job.audio_info.model_copy(update={"path": a}), job.video_info.at(v), d, out_dir, opts)

    return STAGE.run(work_root, produce, refresh, job=job, detections=detections, opts=opts)
