"""The final_mux stage: the silent video + the audio (AAC) in the output's container, then published
to the output URL in one atomic step."""
from __future__ import annotations

from pathlib import Path

from core.media import mux
from core.products import AudioTrack, FinalVideo, Job, SilentVideo
from core.stage import Stage
from core.storage import local_copy, publish


def final_mux(video: str, audio: str, out_path: str | Path) -> str:
    """The silent H.264 video + the audio as AAC, written under a temporary name then moved."""
    return str(mux(video, audio, out_path, audio_codec="aac"))


def _container(output: str) -> str:
    return Path(output).suffix or ".mp4"


def _key_inputs(video: SilentVideo, audio: AudioTrack, job: Job) -> dict:
    return {"video": video.key, "audio": audio.key, "container": _container(job.output)}


STAGE = Stage("final_mux", version="1", product=FinalVideo, key_inputs=_key_inputs)


@STAGE.task
def final_mux_task(video: SilentVideo, audio: AudioTrack, job: Job, work_root: str,
                   refresh: bool = False) -> FinalVideo:
    """Mux into the work area (reused when finished), then publish to the job's output on every run:
    two jobs with the same content and different outputs each get their file."""
    def produce(out_dir: Path) -> FinalVideo:
        with local_copy(video.video, "video") as v, local_copy(audio.audio, "audio") as a:
            return FinalVideo(video=final_mux(v, a, out_dir / f"final{_container(job.output)}"))

    done = STAGE.run(work_root, produce, refresh, video=video, audio=audio, job=job)
    with local_copy(done.video, "final video") as path:
        return done.model_copy(update={"output": publish(path, job.output)})
