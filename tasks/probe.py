"""Validate a job's inputs before any model work: readable media, an audio track, a usable output."""
from __future__ import annotations

from core.errors import InputError
from core.media import probe_audio, probe_video
from core.prefect_task import stage_task
from core.storage import check_output, local_copy
from core.workarea import content_sha256


def validate_job(audio: str, video: str, output: str, still_fps: float = 25.0) -> dict:
    """Check the inputs and the output location; return the facts the pipeline needs."""
    check_output(output, [audio, video])
    with local_copy(audio, "audio") as a:
        ainfo = probe_audio(a, "audio")
        if ainfo.duration <= 0:
            raise InputError(f"audio {audio}: audio stream has zero length")
    with local_copy(video, "video") as v:
        vinfo = probe_video(v, still_fps=still_fps)
    return {
        "audio": audio, "video": video, "output": output, "audio_duration": ainfo.duration,
        "width": vinfo.width, "height": vinfo.height, "fps": float(vinfo.fps),
        "n_frames": vinfo.n_frames, "is_still": vinfo.is_still, "vfr": vinfo.vfr,
    }


def probe_job(audio: str, video: str, output: str, still_fps: float = 25.0) -> dict:
    """:func:`validate_job` plus the inputs' content hashes (the root of every stage's cache key)."""
    job = validate_job(audio, video, output, still_fps)
    job["audio_sha256"] = content_sha256(audio, "audio")
    job["video_sha256"] = content_sha256(video, "video")
    return job


@stage_task("probe", retries=2)
def probe_task(audio: str, video: str, output: str, still_fps: float = 25.0) -> dict:
    return probe_job(audio, video, output, still_fps)
