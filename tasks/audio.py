"""Stage 3: the synced video's audio track, copied losslessly (it is FLAC inside the synced video)."""
from __future__ import annotations

from pathlib import Path

from core.media import write_audio_track
from core.prefect_task import stage_task
from core.workarea import WorkArea, run_stage


def extract_audio(video: str, out_dir: str | Path) -> str:
    """Copy the audio stream of ``video`` to ``out_dir/audio.flac`` without re-encoding."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return str(write_audio_track(video, out_dir / "audio.flac", codec="copy"))


VERSION = "1"


@stage_task("extract_audio")
def extract_audio_task(synced: dict, work_root: str) -> dict:
    return run_stage(WorkArea(work_root), "audio", VERSION, {"synced": synced["key"]},
                     lambda out_dir: {"audio": extract_audio(synced["video"], out_dir)})
