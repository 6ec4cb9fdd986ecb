"""The split_video stage: the synced video -> ordered chunks of frames, one lossless file per chunk,
frame-exact, for enhancement to map over."""
from __future__ import annotations

from pathlib import Path

from core.media import count_frames, split_segments
from core.options import RunOptions
from core.products import Chunk, SyncedVideo, VideoChunks
from core.stage import Stage
from core.storage import local_copy

CHUNKS_PER_WORKER = 2   # a worker that finishes early takes another chunk instead of idling at the end
MIN_CHUNK_FRAMES = 4    # a worker's share is halved only when each half keeps at least this many frames
MAX_CHUNK_FRAMES = 50   # ~2 min of CPU work (bf16): progress moves, a resumed run redoes little


def chunk_frames_for(n_frames: int, workers: int) -> int:
    """Frames per enhancement chunk for ``n_frames`` on ``workers`` parallel workers.

    Every worker gets the same number of chunks (as far as there are frames): one, two when each keeps
    at least ``MIN_CHUNK_FRAMES`` frames, more when chunks would pass ``MAX_CHUNK_FRAMES``. A chunk's
    fixed cost (a task run, two ffmpeg pipes, a manifest) is small beside a face on a CPU worker (2-4 s
    of GFPGAN); GPU workers, ~100x faster per face, would want a larger floor.
    """
    if n_frames < 1 or workers < 1:
        raise ValueError(f"need frames and workers, got {n_frames} frames for {workers} workers")
    per_worker = max(1, min(CHUNKS_PER_WORKER, n_frames // (workers * MIN_CHUNK_FRAMES)))
    # a long clip gets more chunks, still the same number per worker (250 frames on 2 workers: 6 of 42,
    # not 5 of 50, which would leave one worker 3 chunks to the other's 2)
    per_worker = max(per_worker, -(-n_frames // (workers * MAX_CHUNK_FRAMES)))
    return -(-n_frames // (workers * per_worker))


def resolve_chunk_frames(chunk_frames: int | str, n_frames: int, workers: int) -> int:
    """The ``--chunk-frames`` value as a number: an explicit one as given, ``auto`` sized to the workers."""
    return chunk_frames_for(n_frames, workers) if chunk_frames == "auto" else int(chunk_frames)


def chunk_bounds(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of consecutive chunks of at most ``chunk_frames``."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be at least 1")
    return [(a, min(a + chunk_frames, n_frames)) for a in range(0, n_frames, chunk_frames)]


def split_video(video: str, n_frames: int, out_dir: str | Path, chunk_frames: int) -> list[Chunk]:
    """Cut ``video`` (all-intra, lossless) into chunks by stream copy: no re-encode, every cut on a frame."""
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


def _key_inputs(synced: SyncedVideo, chunk_frames: int) -> dict:
    return {"synced": synced.key, "chunk_frames": chunk_frames}  # the resolved size: auto or not, same chunks


STAGE = Stage("split_video", version="1", product=VideoChunks, key_inputs=_key_inputs)


@STAGE.task
def split_video_task(synced: SyncedVideo, opts: RunOptions, work_root: str, refresh: bool = False,
                     workers: int = 1) -> VideoChunks:
    """``workers``: how many chunks enhancement runs at once (sizes ``--chunk-frames auto``)."""
    size = resolve_chunk_frames(opts.chunk_frames, synced.n_frames, workers)

    def produce(out_dir: Path) -> VideoChunks:
        with local_copy(synced.video, "synced video") as video:
            return VideoChunks(chunks=tuple(split_video(video, synced.n_frames, out_dir, size)))

    done = STAGE.run(work_root, produce, refresh, synced=synced, chunk_frames=size)
    # each chunk's content key: what enhancement and the combiner key on
    return done.model_copy(update={"chunks": tuple(c.model_copy(update={"key": f"{done.key}/{c.index}"})
                                                   for c in done.chunks)})
