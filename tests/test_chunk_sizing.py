"""Enhancement chunks sized to the workers: the pure sizing rule, the worker count of each runner, and
the flow choosing it (``--chunk-frames auto``, the default) or keeping an explicit size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.split_video import (
    CHUNKS_PER_WORKER,
    MAX_CHUNK_FRAMES,
    MIN_CHUNK_FRAMES,
    chunk_bounds,
    chunks_for,
    resolve_chunks,
)
from tests.conftest import ffmpeg


def sizes(n_frames: int, n_chunks: int) -> list[int]:
    return [b - a for a, b in chunk_bounds(n_frames, n_chunks)]


@pytest.mark.parametrize("n_frames, workers, cut", [
    (50, 2, [13, 13, 12, 12]),  # the 2 s clip on this machine's 2 workers: two chunks each
    (50, 1, [25, 25]),
    (10, 2, [5, 5]),            # halves would be under MIN_CHUNK_FRAMES: one chunk per worker
    (7, 2, [4, 3]),
    (1, 8, [1]),                # fewer frames than workers: one frame each, as far as they go
    (3, 8, [1, 1, 1]),
])
def test_chunks_for_frames_and_workers(n_frames, workers, cut):
    assert sizes(n_frames, chunks_for(n_frames, workers)) == cut


def test_a_long_clip_gets_capped_chunks_the_same_number_per_worker():
    assert sizes(7500, chunks_for(7500, 2)) == [50] * 150
    assert sizes(250, chunks_for(250, 2)) == [42, 42, 42, 42, 41, 41]   # not 5 of 50: 3 chunks against 2


def _busiest_worker(bounds: list[tuple[int, int]], workers: int) -> int:
    """Frames of the busiest worker when each chunk, in order, goes to the least loaded one."""
    loads = [0] * workers
    for a, b in bounds:
        loads[loads.index(min(loads))] += b - a
    return max(loads)


def test_every_worker_is_busy_and_no_chunk_is_tiny_or_huge():
    for workers in range(1, 9):
        for n in range(1, 1200):
            bounds = chunk_bounds(n, chunks_for(n, workers))
            cut = [b - a for a, b in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == n and sum(cut) == n
            assert all(x == y for (_, x), (y, _) in zip(bounds, bounds[1:]))       # consecutive
            assert max(cut) - min(cut) <= 1 and max(cut) <= MAX_CHUNK_FRAMES
            assert len(cut) == min(n, workers) or len(cut) % workers == 0, (n, workers)  # same count each
            if n >= CHUNKS_PER_WORKER * workers * MIN_CHUNK_FRAMES:
                assert len(cut) >= CHUNKS_PER_WORKER * workers, (n, workers)         # two each when it allows
                assert min(cut) >= MIN_CHUNK_FRAMES, (n, workers)                   # not split below the floor
            # every worker busy to the end: none gets more than its even share, rounded up
            assert _busiest_worker(bounds, workers) <= -(-n // workers), (n, workers, cut)


def test_explicit_chunk_frames_are_a_maximum_cut_even():
    assert sizes(50, resolve_chunks(7, 50, 2)) == [7, 7, 6, 6, 6, 6, 6, 6]
    assert sizes(16, resolve_chunks(6, 16, 2)) == [6, 5, 5]
    assert sizes(4, resolve_chunks(10, 4, 2)) == [4]
    assert resolve_chunks("auto", 50, 2) == 4
    with pytest.raises(ValueError):
        chunks_for(0, 2)
    with pytest.raises(ValueError):
        chunk_bounds(3, 4)


def test_worker_count_of_each_runner(monkeypatch):
    from distributed import LocalCluster

    from flows.runners import enhancement_workers

    monkeypatch.delenv("WAV2LIP_HQ_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("WAV2LIP_HQ_DASK_GPU", raising=False)
    assert enhancement_workers(dask_workers=0) == 1     # no Dask: one chunk at a time
    assert enhancement_workers(dask_workers=3) == 3     # a local cluster's plan (not started)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as cluster:
        assert enhancement_workers(cluster.scheduler_address) == 2   # asked from the scheduler
        monkeypatch.setenv("WAV2LIP_HQ_DASK_ADDRESS", cluster.scheduler_address)
        assert enhancement_workers() == 2
        monkeypatch.setenv("WAV2LIP_HQ_DASK_GPU", "1")
        assert enhancement_workers() == 2                            # tasks that ask for a GPU each
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("WAV2LIP_HQ_DASK_GPU", "0")
        assert enhancement_workers(cluster.scheduler_address) == 3   # a worker's threads run chunks at once


@pytest.fixture
def faceless(tmp_path) -> dict:
    """16 frames of a test pattern (no face: enhancement has nothing to restore) and their audio."""
    video, audio = tmp_path / "pattern.mp4", tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x128:rate=25", "-frames:v", "16", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(video))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=0.64", "-ac", "1", str(audio))
    return {"video": str(video), "audio": str(audio)}


def _chunk_manifests(work: Path) -> tuple[list[int], set[str]]:
    """Frames per chunk of the split, and the workers that enhanced them."""
    split = [json.loads(p.read_text()) for p in (work / "split_video").glob("*/manifest.json")]
    assert len(split) == 1
    enhanced = [json.loads(p.read_text()) for p in (work / "enhance_chunk").glob("*/manifest.json")]
    assert len(enhanced) == len(split[0]["chunks"])
    return [c["n_frames"] for c in split[0]["chunks"]], {e["worker"] for e in enhanced}


def test_the_flow_sizes_chunks_to_its_workers(prefect_server, models_dir, faceless, tmp_path):
    from flows.lipsync_hq import lipsync_hq

    common = {"audio": faceless["audio"], "video": faceless["video"], "precision": "bf16"}
    lipsync_hq(**common, output=str(tmp_path / "auto.mp4"), work_dir=str(tmp_path / "auto"), dask_workers=2)
    cut, workers = _chunk_manifests(tmp_path / "auto")
    assert cut == [4, 4, 4, 4]                              # 2 per worker (1 worker would get 2 of 8)
    assert len(workers) == 2, workers                       # both workers enhanced chunks
    lipsync_hq(**common, output=str(tmp_path / "fixed.mp4"), work_dir=str(tmp_path / "fixed"), dask_workers=0,
               chunk_frames=6)
    assert _chunk_manifests(tmp_path / "fixed")[0] == [6, 5, 5]   # an explicit size is a maximum, cut even
