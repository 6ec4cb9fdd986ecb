"""Stage 3: the synced video's audio track, copied losslessly (it is FLAC inside the synced video)."""
from __future__ import annotations

from pathlib import Path

from core.media import write_audio_track
from core.prefect_task import stage_task
from core.storage import local_copy
from core.workarea import WorkArea, run_stage


def extract_audio(video: str, out_dir: str | Path) -> str:
    """Copy the audio stream of ``video`` to ``out_dir/audio.flac`` without re-encoding."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return str(write_audio_track(video, out_dir / "audio.flac", codec="copy"))


VERSION = "1"


def _parts(synced: dict, **_) -> dict:
    return {"synced": synced["key"]}


@stage_task("extract_audio", stage="audio", version=VERSION, parts=_parts)
def extract_audio_task(synced: dict, work_root: str, refresh: bool = False) -> dict:
    def produce(out_dir: Path) -> dict:
        with local_copy(synced["video"], "synced video") as video:
            return {"audio": extract_audio(video, out_dir)}

    return run_stage(WorkArea(work_root), "audio", VERSION, _parts(synced), produce, refresh)
