"""The extract_audio stage: the synced video's audio track, copied losslessly (FLAC inside the synced
video), for the final mux."""
from __future__ import annotations

from pathlib import Path

from core.media import write_audio_track
from core.products import AudioTrack, SyncedVideo
from core.stage import Stage
from core.storage import local_copy


def extract_audio(video: str, out_dir: str | Path) -> str:
    """Copy the audio stream of ``video`` to ``out_dir/audio.flac`` without re-encoding."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return str(write_audio_track(video, out_dir / "audio.flac", codec="copy"))


STAGE = Stage("extract_audio", version="1", product=AudioTrack, key_inputs=lambda synced: {"synced": synced.key})


@STAGE.task
def extract_audio_task(synced: SyncedVideo, work_root: str, refresh: bool = False) -> AudioTrack:
    def produce(out_dir: Path) -> AudioTrack:
        with local_copy(synced.video, "synced video") as video:
            return AudioTrack(audio=extract_audio(video, out_dir))

    return STAGE.run(work_root, produce, refresh, synced=synced)
