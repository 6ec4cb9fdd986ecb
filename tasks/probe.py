"""The probe stage: validate a job's inputs before any model work and learn, once, what later stages
need of them (media facts, content hashes)."""
from __future__ import annotations

from core.errors import InputError
from core.media import AudioInfo, VideoInfo, probe_audio, probe_video
from core.options import RunOptions
from core.products import Job
from core.stage import pipeline_task
from core.storage import check_output, local_copy
from core.workarea import content_sha256


def check_inputs(audio: str, video: str, output: str, opts: RunOptions = RunOptions()
                 ) -> tuple[AudioInfo, VideoInfo]:
    """Check the inputs and the output location; the inputs' media facts, naming them as given."""
    check_output(output, [audio, video])
    with local_copy(audio, "audio") as a:
        audio_info = probe_audio(a, "audio")
        if audio_info.duration <= 0:
            raise InputError(f"audio {audio}: audio stream has zero length")
    with local_copy(video, "video") as v:
        video_info = probe_video(v, still_fps=opts.still_fps)
    return audio_info.model_copy(update={"path": audio}), video_info.at(video)


def probe(audio: str, video: str, output: str, opts: RunOptions = RunOptions()) -> Job:
    """:func:`check_inputs` plus the inputs' content hashes (the root of every stage's key).

    Stages read the facts instead of probing again, each on its own local copy of the input.
    """
    audio_info, video_info = check_inputs(audio, video, output, opts)
    return Job(audio=audio, video=video, output=output, audio_sha256=content_sha256(audio, "audio"),
               video_sha256=content_sha256(video, "video"), audio_info=audio_info, video_info=video_info)


@pipeline_task("probe")
def probe_task(audio: str, video: str, output: str, opts: RunOptions) -> Job:
    return probe(audio, video, output, opts)
