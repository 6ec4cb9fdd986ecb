"""Stage 2: synced video -> ordered chunks of frames, one lossless file per chunk, frame-exact."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from core.media import count_frames, run_ffmpeg
from core.prefect_task import stage_task
from core.storage import local_copy
from core.workarea import WorkArea, run_stage


@dataclass(frozen=True)
class Chunk:
    path: str
    index: int
    start: int      # index of its first frame in the whole video
    n_frames: int

    def to_dict(self) -> dict:
        return asdict(self)


def chunk_bounds(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of consecutive chunks of at most ``chunk_frames``."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be at least 1")
    return [(a, min(a + chunk_frames, n_frames)) for a in range(0, n_frames, chunk_frames)]


def split_video(video: str, n_frames: int, out_dir: str | Path, chunk_frames: int = 50) -> list[Chunk]:
    """Cut ``video`` (all-intra FFV1) into chunks by stream copy: no re-encode, every cut on a frame."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = chunk_bounds(n_frames, chunk_frames)
    pattern = out_dir / "chunk_%05d.mkv"
    cuts = ",".join(str(a) for a, _ in bounds[1:])
    args = ["-i", video, "-map", "0:v:0", "-c:v", "copy"]
    if cuts:
        args += ["-f", "segment", "-reset_timestamps", "1", "-segment_frames", cuts, str(pattern)]
    else:  # one chunk: a plain copy (the segment muxer needs at least one cut)
        args += [str(out_dir / "chunk_00000.mkv")]
    run_ffmpeg(args, f"splitting {video} into chunks")
    chunks = []
    for k, (a, b) in enumerate(bounds):
        path = out_dir / f"chunk_{k:05d}.mkv"
        got = count_frames(path) if path.exists() else 0
        if got != b - a:
            raise RuntimeError(f"chunk {path} has {got} frames, expected {b - a}")
        chunks.append(Chunk(str(path), k, a, b - a))
    return chunks


VERSION = "1"


def _parts(synced: dict, chunk_frames: int, **_) -> dict:
    return {"synced": synced["key"], "chunk_frames": chunk_frames}


@stage_task("split_video", stage="split", version=VERSION, parts=_parts)
def split_task(synced: dict, chunk_frames: int, work_root: str, refresh: bool = False) -> list[dict]:
    def produce(out_dir: Path) -> dict:
        with local_copy(synced["video"], "synced video") as video:
            chunks = split_video(video, synced["n_frames"], out_dir, chunk_frames)
        return {"chunks": [c.to_dict() for c in chunks]}

    done = run_stage(WorkArea(work_root), "split", VERSION, _parts(synced, chunk_frames), produce, refresh)
    return [dict(c, key=f"{done['key']}/{c['index']}") for c in done["chunks"]]
