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


def chunks_for(n_frames: int, workers: int) -> int:
    """How many enhancement chunks ``n_frames`` make on ``workers`` parallel workers.

    Every worker gets the same number of chunks (as far as there are frames): one, two when each keeps
    at least ``MIN_CHUNK_FRAMES`` frames, more when chunks would pass ``MAX_CHUNK_FRAMES``. A chunk's
    fixed cost (a task run, two ffmpeg pipes, a manifest) is small beside a face on a CPU worker (0.5 s
    of GFPGAN); GPU workers, ~100x faster per face, would want a larger floor.
    """
    if n_frames < 1 or workers < 1:
        raise ValueError(f"need frames and workers, got {n_frames} frames for {workers} workers")
    per_worker = max(1, min(CHUNKS_PER_WORKER, n_frames // (workers * MIN_CHUNK_FRAMES)))
    per_worker = max(per_worker, -(-n_frames // (workers * MAX_CHUNK_FRAMES)))
    return min(n_frames, workers * per_worker)


def resolve_chunks(chunk_frames: int | str, n_frames: int, workers: int) -> int:
    """The number of chunks ``--chunk-frames`` asks for: ``auto`` sized to the workers, a number as the
    fewest chunks of at most that many frames."""
    return chunks_for(n_frames, workers) if chunk_frames == "auto" else -(-n_frames // int(chunk_frames))


def chunk_bounds(n_frames: int, n_chunks: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of ``n_chunks`` consecutive chunks whose sizes differ by one frame at
    most, the larger ones first.

    Even sizes let workers finish together: 50 frames in 4 chunks as 13, 13, 12, 12 give each of two
    workers 25 frames whichever pair it takes, where 13, 13, 13, 11 left one of them 26.
    """
    if not 1 <= n_chunks <= n_frames:
        raise ValueError(f"cannot cut {n_frames} frames into {n_chunks} chunks")
    small, larger = divmod(n_frames, n_chunks)
    ends = [0]
    for k in range(n_chunks):
        ends.append(ends[-1] + small + (k < larger))
    return list(zip(ends, ends[1:]))


def split_video(video: str, n_frames: int, out_dir: str | Path, n_chunks: int) -> list[Chunk]:
    """Cut ``video`` (all-intra, lossless) into chunks by stream copy: no re-encode, every cut on a frame."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = chunk_bounds(n_frames, n_chunks)
    split_segments(video, [a for a, _ in bounds], out_dir / "chunk_%05d.mkv")
    chunks = []
    for k, (a, b) in enumerate(bounds):
        path = out_dir / f"chunk_{k:05d}.mkv"
        got = count_frames(path) if path.exists() else 0
        if got != b - a:
            raise RuntimeError(f"chunk {path} has {got} frames, expected {b - a}")
        chunks.append(Chunk(path=str(path), index=k, start=a, n_frames=b - a))
    return chunks


def _key_inputs(synced: SyncedVideo, n_chunks: int) -> dict:
    return {"synced": synced.key, "n_chunks": n_chunks}  # resolved: auto or not, the same count cuts the same


STAGE = Stage("split_video", version="2", product=VideoChunks, key_inputs=_key_inputs)


@STAGE.task
def split_video_task(synced: SyncedVideo, opts: RunOptions, work_root: str, refresh: bool = False,
                     workers: int = 1) -> VideoChunks:
    """``workers``: how many chunks enhancement runs at once (sizes ``--chunk-frames auto``)."""
    n_chunks = resolve_chunks(opts.chunk_frames, synced.n_frames, workers)

    def produce(out_dir: Path) -> VideoChunks:
        with local_copy(synced.video, "synced video") as video:
            return VideoChunks(chunks=tuple(split_video(video, synced.n_frames, out_dir, n_chunks)))

    done = STAGE.run(work_root, produce, refresh, synced=synced, n_chunks=n_chunks)
    # each chunk's content key: what enhancement and the combiner key on
    return done.model_copy(update={"chunks": tuple(c.model_copy(update={"key": f"{done.key}/{c.index}"})
                                                   for c in done.chunks)})
