"""The score_sync stage: SyncNet's LSE-D / LSE-C of a finished video against its own audio track.

It runs after final_mux when ``syncnet_v2.model`` is present (optional, like S3FD), keyed by the
content of the video and of the weights, so a batch asking for the scores of an output its job has just
scored finds them in the work area. ``wav2lip-hq score`` runs :func:`score_video` directly.
"""
from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.media import decode_pcm16, iter_frames_at, probe_audio, probe_video
from core.products import SyncScores
from core.progress import Progress, get_logger
from core.stage import Stage
from core.storage import local_copy, redact
from models.sync_faces import MIN_TRACK, crop_track, longest, link_tracks
from models.syncnet import (
    CROP,
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VSHIFT,
    evaluate_sync,
)

SYNCNET_FILE = "syncnet_v2.model"


def syncnet_present() -> bool:
    """Whether the optional SyncNet weights are in the models directory (scores are computed then)."""
    from models.weights import weight_path

    return weight_path(SYNCNET_FILE).is_file()


def score_video(video: str, audio: str | None = None, device: str | None = None,
                vshift: int = VSHIFT) -> SyncScores:
    """Scores of the longest face track of local ``video`` (at 25 fps) against ``audio`` (default: the
    video's own track), both starting at time 0. Bad input raises :class:`InputError`."""
    from models.face_detection import CenterFaceDetector
    from models.loading import get_model

    info = probe_video(video)
    if info.is_still:
        raise InputError(f"video {video}: a still image has no lip motion to score")
    speech = audio or video
    try:
        probe_audio(speech, "audio" if audio else "video")
    except InputError as exc:
        raise InputError(f"{exc}{'' if audio else '; give the speech with --audio'}") from None
    net, _ = get_model("syncnet", SYNCNET_FILE, device)  # missing weights fail before frames are decoded

    rate = Fraction(FPS)
    n = max(1, round(info.duration * FPS))
    detect, boxes = CenterFaceDetector(), []
    progress = Progress("sync score: face detection", n)
    for frame in iter_frames_at(info, rate):
        boxes.append(np.asarray([f.box for f in detect(frame)], np.float64).reshape(-1, 4))
        progress.update()
    track = longest(link_tracks(boxes))
    if track is None or len(track) < MIN_TRACK:
        found = "no face" if track is None else f"a face in {len(track)} consecutive frames at most"
        raise InputError(f"video {video}: {found}; scoring needs one face in at least {MIN_TRACK} frames "
                         f"({MIN_TRACK / FPS:.2f} s)")
    wav = decode_pcm16(speech, SAMPLE_RATE, "audio" if audio else "video")
    # the reference cuts the audio to the track's span, as it cuts the video
    wav = wav[track.first * SAMPLES_PER_FRAME:(track.first + len(track)) * SAMPLES_PER_FRAME]
    with tempfile.TemporaryDirectory(prefix="wav2lip-hq-sync-") as tmp:
        # crops of a long video do not fit in memory (150 kB a frame): they go to a file
        crops = np.lib.format.open_memmap(Path(tmp) / "crops.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(track), CROP, CROP, 3))
        crop_track(iter_frames_at(info, rate), track, crops)
        try:
            result = evaluate_sync(net, crops, wav, vshift)
        except ValueError as exc:
            raise InputError(f"{'audio ' + audio if audio else 'video ' + video}: {exc}") from None
        finally:
            del crops
    get_logger().info("sync score of %s: offset %d, LSE-D %.3f, LSE-C %.3f (%d windows from %.2f s)",
                      redact(video), result.offset, result.lse_d, result.lse_c, len(result.framewise),
                      track.first / FPS)
    return SyncScores(offset=result.offset, lse_d=result.lse_d, lse_c=result.lse_c, first_frame=track.first,
                      framewise=tuple(float(v) for v in result.framewise))


def _key_inputs(video_sha256: str, weights_sha256: str) -> dict:
    return {"video": video_sha256, "weights": weights_sha256, "vshift": VSHIFT}


STAGE = Stage("score_sync", version="1", product=SyncScores, key_inputs=_key_inputs)


def score_sync(video: str, work_root: str, refresh: bool = False, device: str | None = None) -> SyncScores:
    """The scores of ``video`` (path or URL) from the work area, or computed and kept there."""
    from core.workarea import content_sha256
    from models.weights import require, sha256_file

    def produce(_out_dir: Path) -> SyncScores:
        with local_copy(video, "video") as path:
            return score_video(path, device=device)

    return STAGE.run(work_root, produce, refresh, video_sha256=content_sha256(video, "video"),
                     weights_sha256=sha256_file(require(SYNCNET_FILE)))


score_sync_task = STAGE.task(score_sync)


def score_output(video: str, work_root: str, refresh: bool = False, device: str | None = None
                 ) -> SyncScores | None:
    """The scores of a finished video when the SyncNet weights are present, else None. A video that
    cannot be scored (no face track, say) is logged, never a reason for its job to fail."""
    if not syncnet_present():
        return None
    try:
        return score_sync_task(video, work_root, refresh, device)
    except Exception as exc:  # noqa: BLE001 - the scores are a report on the job, not part of it
        get_logger().warning("no sync scores for %s: %s", redact(video), exc)
        return None
