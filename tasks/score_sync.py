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
from core.products import SyncScores, TrackScore
from core.progress import Progress, get_logger
from core.stage import Stage
from core.storage import local_copy, redact
from models.sync_faces import MIN_TRACK, Track, crop_tracks, link_tracks, scorable
from models.syncnet import (
    CROP,
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VSHIFT,
    SyncResult,
    evaluate_sync,
)

SYNCNET_FILE = "syncnet_v2.model"


def syncnet_present() -> bool:
    """Whether the optional SyncNet weights are in the models directory (scores are computed then)."""
    from models.weights import weight_path

    return weight_path(SYNCNET_FILE).is_file()


def score_video(video: str, audio: str | None = None, device: str | None = None,
                vshift: int = VSHIFT) -> SyncScores:
    """Scores of local ``video`` (at 25 fps) against ``audio`` (default: the video's own track), both
    starting at time 0: every face track of :data:`MIN_TRACK` frames or more is scored, as the reference
    evaluation scores every track it keeps, and the one in best sync (highest LSE-C) is reported: in a
    lip-synced video, the face that was lip-synced, however long the others are on screen. Bad input
    raises :class:`InputError`."""
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
    tracks = link_tracks(boxes)
    chosen = scorable(tracks)
    if not chosen:
        most = max((len(t) for t in tracks), default=0)
        found = "no face" if not tracks else f"a face in {most} consecutive frames at most"
        raise InputError(f"video {video}: {found}; scoring needs one face in at least {MIN_TRACK} frames "
                         f"({MIN_TRACK / FPS:.2f} s)")
    wav = decode_pcm16(speech, SAMPLE_RATE, "audio" if audio else "video")
    scored: list[tuple[Track, SyncResult]] = []
    errors: list[tuple[Track, ValueError]] = []
    with tempfile.TemporaryDirectory(prefix="wav2lip-hq-sync-") as tmp:
        # crops of a long video do not fit in memory (150 kB a frame): they go to files
        crops = [np.lib.format.open_memmap(Path(tmp) / f"crops{k}.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(t), CROP, CROP, 3)) for k, t in enumerate(chosen)]
        crop_tracks(iter_frames_at(info, rate), chosen, crops)
        for track, faces in zip(chosen, crops):
            # the reference cuts the audio to the track's span, as it cuts the video
            span = wav[track.first * SAMPLES_PER_FRAME:(track.first + len(track)) * SAMPLES_PER_FRAME]
            try:
                scored.append((track, evaluate_sync(net, faces, span, vshift)))
            except ValueError as exc:  # the audio ends before this track has a window
                errors.append((track, exc))
        del crops
    if not scored:
        raise InputError(f"{'audio ' + audio if audio else 'video ' + video}: {errors[0][1]}")
    log = get_logger()
    for track, exc in errors:
        log.info("sync score of %s: the face track from %.2f s is not scored: %s", redact(video), track.first / FPS, exc)
    for k, (track, r) in enumerate(scored):
        log.info("sync score of %s, face track %d of %d (%d frames from %.2f s): offset %d, LSE-D %.3f, LSE-C %.3f",
                 redact(video), k + 1, len(scored), len(track), track.first / FPS, r.offset, r.lse_d, r.lse_c)
    # the highest confidence; among equals the longer, then the earlier track
    track, result = max(scored, key=lambda tr: (tr[1].lse_c, len(tr[0]), -tr[0].first))
    if len(scored) > 1:
        log.info("sync score of %s: the face track from %.2f s is in best sync", redact(video), track.first / FPS)
    return SyncScores(offset=result.offset, lse_d=result.lse_d, lse_c=result.lse_c, first_frame=track.first,
                      framewise=tuple(float(v) for v in result.framewise),
                      tracks=tuple(TrackScore(first_frame=t.first, frames=len(t), offset=r.offset, lse_d=r.lse_d,
                                              lse_c=r.lse_c) for t, r in scored))


def _key_inputs(video_sha256: str, weights_sha256: str) -> dict:
    return {"video": video_sha256, "weights": weights_sha256, "vshift": VSHIFT}


STAGE = Stage("score_sync", version="2", product=SyncScores, key_inputs=_key_inputs)


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
