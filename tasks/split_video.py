"""The split_video stage: the synced video -> ordered chunks of frames, one lossless file per chunk,
frame-exact, for enhancement to map over."""
from __future__ import annotations

from pathlib import Path

from core.media import count_frames, split_segments
from core.options import RunOptions
from core.products import Chunk, SyncedVideo, VideoChunks
from core.stage import Stage
from core.storage import local_copy


def chunk_bounds(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of consecutive chunks of at most ``chunk_frames``."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be at least 1")
    return [(a, min(a + chunk_frames, n_frames)) for a in range(0, n_frames, chunk_frames)]


def split_video(video: str, n_frames: int, out_dir: str | Path, chunk_frames: int) -> list[Chunk]:
    """Cut ``video`` (all-intra FFV1) into chunks by stream copy: no re-encode, every cut on a frame."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = chunk_bounds(n_frames, chunk_frames)
    split_segments(video, [a for a, _ in bounds], out_dir / "chunk_%05d.mkv")
    chunks = []
    for k, (a, b) in enumerate(bounds):
        path = out_dir / f"chunk_{k:05d}.mkv"
        got = count_frames(path) if path.exists() else 0
        if got != b - a:
            raise RuntimeError(f"chunk {path} has {got} frames, expected {b - a}")
        chunks.append(Chunk(path=str(path), index=k, start=a, n_frames=b - a))
    return chunks


def _key_inputs(synced: SyncedVideo, opts: RunOptions) -> dict:
    return {"synced": synced.key, "chunk_frames": opts.chunk_frames}


STAGE = Stage("split_video", version="1", product=VideoChunks, key_inputs=_key_inputs)


@STAGE.task
def split_video_task(synced: SyncedVideo, opts: RunOptions, work_root: str, refresh: bool = False) -> VideoChunks:
    def produce(out_dir: Path) -> VideoChunks:
        with local_copy(synced.video, "synced video") as video:
            return VideoChunks(chunks=tuple(split_video(video, synced.n_frames, out_dir, opts.chunk_frames)))

    done = STAGE.run(work_root, produce, refresh, synced=synced, opts=opts)
    # each chunk's content key: what enhancement and the combiner key on
    return done.model_copy(update={"chunks": tuple(c.model_copy(update={"key": f"{done.key}/{c.index}"})
                                                   for c in done.chunks)})
