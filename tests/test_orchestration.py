"""Orchestration: content-keyed caching and resume, retries, Dask workers, S3 end to end (batch: test_batch.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from core.errors import InputError
from tests.conftest import REPO, ffmpeg


# ---------------------------------------------------------------------------------- cache keys
def _detect_key(audio: str, video: str, opts, out: str) -> str:
    from tasks import detect_faces
    from tasks.probe import probe

    return detect_faces.STAGE.key(job=probe(audio, video, out, opts), opts=opts)


def _lipsync_key(audio: str, video: str, opts, out: str) -> str:
    """The lipsync key of a job, as the stages declare it."""
    from core.products import FaceDetections
    from tasks import lipsync
    from tasks.probe import probe

    dets = FaceDetections(key=_detect_key(audio, video, opts, out), detections="", n_frames=0, faces=0)
    return lipsync.STAGE.key(job=probe(audio, video, out, opts), detections=dets, opts=opts)


def test_cache_key_follows_content_parameters_and_weights(models_dir, tiny, tmp_path):
    from core.options import RunOptions

    def key(audio, video, opts=RunOptions()):
        return _lipsync_key(audio, video, opts, str(tmp_path / "o.mp4"))

    base = key(tiny["audio"], tiny["video"])
    moved = tmp_path / "elsewhere" / "renamed.mp4"
    moved.parent.mkdir()
    shutil.copyfile(tiny["video"], moved)
    assert key(tiny["audio"], str(moved)) == base                      # only the path changed
    assert key(tiny["audio"], tiny["video"], RunOptions(pads=(0, 20, 0, 0))) != base  # a parameter
    # options of later stages leave lip-sync alone
    assert key(tiny["audio"], tiny["video"], RunOptions(blend=0.5, upscale=2, crf=20, chunk_frames=7)) == base
    changed = tmp_path / "changed.wav"
    ffmpeg("-i", tiny["audio"], "-af", "volume=0.5", str(changed))
    assert key(str(changed), tiny["video"]) != base                    # the content
    other_models = tmp_path / "models"
    other_models.mkdir()
    from tests.checkpoints import make_wav2lip_checkpoint

    make_wav2lip_checkpoint(other_models / "wav2lip_gan.pth", seed=99)
    os.symlink(models_dir / "GFPGANv1.4.pth", other_models / "GFPGANv1.4.pth")  # the job needs it too
    os.environ["WAV2LIP_HQ_MODELS_DIR"] = str(other_models)
    try:
        assert key(tiny["audio"], tiny["video"]) != base               # the weights
    finally:
        os.environ["WAV2LIP_HQ_MODELS_DIR"] = str(models_dir)


def test_face_detection_is_keyed_by_the_video_alone(models_dir, tiny, tmp_path):
    from core.options import RunOptions

    def key(audio, video, opts=RunOptions()):
        return _detect_key(audio, video, opts, str(tmp_path / "o.mp4"))

    base = key(tiny["audio"], tiny["video"])
    other_audio = tmp_path / "other.wav"
    ffmpeg("-i", tiny["audio"], "-af", "volume=0.5", str(other_audio))
    assert key(str(other_audio), tiny["video"]) == base                # new audio: same detections
    os.symlink(models_dir / "wav2lip_gan.pth", models_dir / "wav2lip.pth")  # the probe checks it is there
    try:
        assert key(tiny["audio"], tiny["video"], RunOptions(pads=(0, 20, 0, 0), checkpoint="wav2lip.pth",
                                                            precision="fp32")) == base
    finally:
        (models_dir / "wav2lip.pth").unlink()
    from tests.test_s3fd import _official_random_state_dict

    torch.save(_official_random_state_dict(), models_dir / "s3fd-619a316812.pth")
    try:
        assert key(tiny["audio"], tiny["video"], RunOptions(detector="s3fd")) != base  # another detector
    finally:
        (models_dir / "s3fd-619a316812.pth").unlink()
    flipped = tmp_path / "flipped.mp4"
    ffmpeg("-i", tiny["video"], "-vf", "hflip", "-c:v", "ffv1", str(flipped))
    assert key(tiny["audio"], str(flipped)) != base


def test_a_new_audio_track_reuses_the_face_detections(models_dir, tiny, tmp_path):
    """Two jobs on one video: detection runs once, lip-sync twice, and both outputs are complete."""
    from core.media import probe_video
    from flows.lipsync_hq import lipsync_hq

    other_audio = tmp_path / "other.wav"
    ffmpeg("-i", tiny["audio"], "-af", "volume=0.5", str(other_audio))
    work = tmp_path / "work"
    results = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    before = set(results.rglob("*"))
    for i, audio in enumerate([tiny["audio"], str(other_audio)]):
        lipsync_hq(audio=audio, video=tiny["video"], output=str(tmp_path / f"out{i}.mp4"),
                   enhance=False, work_dir=str(work), dask_workers=0)
    # the work area is the only cache: no stage result is pickled into Prefect's result storage
    assert set(results.rglob("*")) == before
    faces = [json.loads(p.read_text()) for p in (work / "detect_faces").glob("*/manifest.json")]
    assert len(faces) == 1 and faces[0]["faces"] >= 1
    assert len(list((work / "lipsync").glob("*/manifest.json"))) == 2
    assert all(probe_video(str(tmp_path / f"out{i}.mp4")).n_frames > 0 for i in range(2))


def test_a_cached_result_never_points_into_another_work_area(models_dir, tiny, tmp_path):
    """Same video, two work areas: once area A's results are cached and A is deleted, a run on area B
    that reuses B's face detections for a new audio track finds B's file, not A's (Prefect's cache
    key names the work area, not only the content)."""
    from core.media import probe_video
    from flows.lipsync_hq import lipsync_hq

    other_audio = tmp_path / "other.wav"
    ffmpeg("-i", tiny["audio"], "-af", "volume=0.5", str(other_audio))

    def run(area: str, n: int, audio: str = tiny["audio"]) -> None:
        lipsync_hq(audio=audio, video=tiny["video"], output=str(tmp_path / f"{area}{n}.mp4"),
                   enhance=False, work_dir=str(tmp_path / area), dask_workers=0)

    run("A", 1)
    run("A", 2)          # every stage finished in A: results cached under their keys
    run("B", 1)
    shutil.rmtree(tmp_path / "A")
    run("B", 2, str(other_audio))   # detections finished in B, lip-sync not: it reads B's detections
    assert probe_video(str(tmp_path / "B2.mp4")).n_frames == probe_video(str(tmp_path / "B1.mp4")).n_frames


# ---------------------------------------------------------------------------------- retries
class FlakyFS(MemoryFileSystem):
    """An object store whose first writes fail like a network hiccup."""

    protocol = ("flaky",)
    failures_left = 0
    attempts = 0

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path[len("flaky://"):] if path.startswith("flaky://") else path)

    def put_file(self, lpath, rpath, **kwargs):
        FlakyFS.attempts += 1
        if FlakyFS.failures_left > 0:
            FlakyFS.failures_left -= 1
            raise ConnectionError("connection reset by peer (simulated)")
        return super().put_file(lpath, rpath, **kwargs)


fsspec.register_implementation("flaky", FlakyFS, clobber=True)


def test_storage_failing_first_writes_is_retried(prefect_server, models_dir, tiny, tmp_path):
    from flows.lipsync_hq import lipsync_hq

    fs = fsspec.filesystem("flaky")
    fs.mkdir("/outbox")
    FlakyFS.failures_left, FlakyFS.attempts = 2, 0
    out = lipsync_hq(audio=tiny["audio"], video=tiny["video"], output="flaky://outbox/result.mp4",
                     work_dir=str(tmp_path / "w"), enhance=False)
    assert out == "flaky://outbox/result.mp4"
    assert FlakyFS.attempts == 3 and fs.cat("/outbox/result.mp4")[4:8] == b"ftyp"


def test_bad_input_is_not_retried(prefect_server, models_dir, tiny, tmp_path, monkeypatch):
    import tasks.probe
    from flows.lipsync_hq import lipsync_hq

    calls = []
    real = tasks.probe.probe
    monkeypatch.setattr(tasks.probe, "probe", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(InputError, match="file not found"):
        lipsync_hq(audio=str(tmp_path / "missing.wav"), video=tiny["video"], output=str(tmp_path / "o.mp4"),
                   work_dir=str(tmp_path / "w"))
    assert len(calls) == 1


def test_transient_errors_are_retried_and_bad_input_is_not():
    from core.errors import is_retryable
    from core.storage import StorageAccessError, StorageUnreachableError
    from models.checkpoint import CheckpointError

    assert is_retryable(ConnectionError("reset")) and is_retryable(StorageUnreachableError("down"))
    assert is_retryable(RuntimeError("ffmpeg failed")) and is_retryable(OSError("disk"))
    for bad in (InputError("x"), StorageAccessError("denied"), CheckpointError("keys")):
        assert not is_retryable(bad)


# ---------------------------------------------------------------------------------- resume
def _enhance_manifests(work: Path) -> list[Path]:
    return sorted((work / "enhance_chunk").glob("*/manifest.json"))


def test_killed_run_resumes_with_only_the_missing_chunks(prefect_server, models_dir, tiny, tmp_path, monkeypatch):
    from flows.runners import current_api_url

    work = tmp_path / "work"
    out = tmp_path / "out.mp4"
    args = dict(audio=tiny["audio"], video=tiny["video"], output=str(out), work_dir=str(work),
                chunk_frames=2, precision="bf16", dask_workers=0)
    code = f"from flows.lipsync_hq import lipsync_hq; lipsync_hq(**{args!r})"
    env = {**os.environ, "PREFECT_API_URL": current_api_url()}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_enhance_manifests(work)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_enhance_manifests(work))
    assert 2 <= done_before < 4 and not out.exists()

    import tasks.enhance_chunk
    from flows.lipsync_hq import lipsync_hq

    real, calls = tasks.enhance_chunk.enhance_chunk, []
    monkeypatch.setattr(tasks.enhance_chunk, "enhance_chunk", lambda *a, **k: calls.append(a[0].index) or real(*a, **k))
    lipsync_hq(**args)
    assert len(calls) == 4 - done_before  # n - k chunk enhancements, no more
    assert out.is_file()
    calls.clear()
    lipsync_hq(**{**args, "output": str(tmp_path / "again.mp4")})
    assert calls == []  # a finished job does no model work at all
    lipsync_hq(**{**args, "output": str(tmp_path / "fresh.mp4"), "refresh": True})
    assert sorted(calls) == [0, 1, 2, 3]  # --refresh ignores the cache


# ---------------------------------------------------------------------------------- Dask + S3
def test_s3_end_to_end_on_two_dask_workers(prefect_server, models_dir, tiny, s3):
    from core.media import probe_video
    from flows.lipsync_hq import lipsync_hq

    for b in ("media-in", "media-out", "media-work"):
        s3.mkdir(b)
    s3.put_file(tiny["audio"], "media-in/a.wav")
    s3.put_file(tiny["video"], "media-in/v.mp4")
    out = lipsync_hq(audio="s3://media-in/a.wav", video="s3://media-in/v.mp4",
                     output="s3://media-out/result.mp4", work_dir="s3://media-work/w", chunk_frames=2,
                     precision="bf16", dask_workers=2)
    assert out == "s3://media-out/result.mp4" and s3.exists("media-out/result.mp4")
    local = Path(os.environ.get("TMPDIR", "/tmp")) / f"s3-result-{os.getpid()}.mp4"
    s3.get_file("media-out/result.mp4", str(local))
    try:
        assert probe_video(local).n_frames == 8
    finally:
        local.unlink()
    workers = {json.loads(s3.cat(m))["worker"] for m in s3.glob("media-work/w/enhance_chunk/*/manifest.json")}
    assert len(s3.glob("media-work/w/enhance_chunk/*/manifest.json")) == 4
    assert len(workers) == 2, workers  # both Dask worker processes enhanced chunks


def test_local_cluster_is_sized_to_the_machine(monkeypatch):
    from flows.runners import plan_local_cluster, worker_env

    p = plan_local_cluster(cpus=2, mem_gb=24, gpus=0)
    assert (p.n_workers, p.threads_per_worker, p.gpus) == (2, 1, 0)  # this machine: 2 x 1 thread
    p = plan_local_cluster(cpus=16, mem_gb=24, gpus=0)
    assert (p.n_workers, p.threads_per_worker) == (8, 2)       # memory and the cap bound it
    p = plan_local_cluster(cpus=8, mem_gb=7, gpus=0)
    assert (p.n_workers, p.threads_per_worker) == (2, 4)       # ~3 GB per GFPGAN worker
    p = plan_local_cluster(cpus=32, mem_gb=256, gpus=4)
    assert (p.n_workers, p.gpus) == (4, 4)                      # one worker per GPU
    assert plan_local_cluster(3, cpus=2, mem_gb=24, gpus=0).n_workers == 3  # asked for explicitly
    import flows.runners

    monkeypatch.setattr(flows.runners, "current_api_url", lambda: "http://prefect.example:4200/api")
    env = worker_env(threads=2)
    assert env["PREFECT_API_URL"] == "http://prefect.example:4200/api" and env["OMP_NUM_THREADS"] == "2"


def _worker_environment() -> dict:
    import cv2
    import torch

    from models.loading import pin_threads

    from distributed import get_worker

    pin_threads()
    callbacks = get_worker().periodic_callbacks
    return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "omp": os.environ.get("OMP_NUM_THREADS"),
            "threads": torch.get_num_threads(),
            "cv2": cv2.getNumThreads(), "profiler": "profile" in callbacks,
            "tick_ms": callbacks["tick"].callback_time}


@pytest.mark.parametrize("threads", [1, 2])  # 1: OpenCV's default would be every core; 2: Dask's torch default 1
def test_local_cluster_workers_keep_glibc_adaptive_allocation(threads):
    """Dask's nanny would set MALLOC_TRIM_THRESHOLD_ (1.6x slower GFPGAN on CPU); ours leave it out,
    give each worker its threads (torch's and OpenCV's), hold no chunk queued on a busy worker (Dask's
    default saturation 1.1 hands a 1-thread worker two), wake the worker's threads less (no profiler,
    one event-loop tick a second), and leave Dask's own configuration as it was."""
    import dask
    from distributed import Client

    from flows.runners import local_cluster

    before = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    assert "MALLOC_TRIM_THRESHOLD_" in before  # Dask's default: what this guards against
    saturation = dask.config.get("distributed.scheduler.worker-saturation")
    environ = {k: v for k, v in os.environ.items() if k != "__DASK_PARENT_PID"}  # Dask's process-title marker
    cluster = local_cluster(1, threads)
    try:
        # the nanny wrote one thread for OpenMP, MKL and OpenBLAS into this process's environment: later
        # children of the flow's process (benchmark 3's stage runs) started with one thread
        assert {k: v for k, v in os.environ.items() if k != "__DASK_PARENT_PID"} == environ
        with Client(cluster) as client:
            got = client.submit(_worker_environment, pure=False).result(timeout=120)
        assert cluster.scheduler.WORKER_SATURATION == 1.0 != saturation
    finally:
        cluster.close()
    assert got == {"trim": None, "omp": str(threads), "threads": threads, "cv2": threads, "profiler": False,
                   "tick_ms": 1000}
    assert dask.config.get("distributed.worker.profile.enabled") is True  # Dask's defaults, untouched
    assert dask.config.get("distributed.admin.tick.interval") == "20ms"
    assert dask.config.get("distributed.nanny.pre-spawn-environ") == before
    assert dask.config.get("distributed.scheduler.worker-saturation") == saturation


def test_local_cluster_in_a_fresh_process_leaves_dask_config_whole():
    """As the batch flow starts it: nothing has imported `distributed` yet. Closing the cluster
    needs Dask's `distributed` configuration, which the temporary override must not remove."""
    code = ("from flows.runners import local_cluster\n"
            "import sys; assert 'distributed' not in sys.modules\n"
            "cluster = local_cluster(1, 1)\n"
            "cluster.close()\n"
            "import dask; print(dask.config.get('distributed.scheduler.work-stealing'))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("True")


def test_report_keys_are_per_job_and_the_table_tells_wall_from_work():
    from core.products import Chunk
    from flows.report import artifact_key

    a, b = artifact_key("s3://out/talk.mp4", "output"), artifact_key("s3://out/other/talk.mp4", "output")
    assert a != b and a.startswith("talk-") and a.endswith("-output")
    assert artifact_key("s3://KEY:SECRET@b/x.mp4", "output").startswith("x-")  # no credentials in keys
    assert all(c.islower() or c.isdigit() or c == "-" for c in a)
    # two chunks run side by side for 10 s each: 10 s of wall time, 20 s of work
    chunks = [Chunk(path="c", index=i, start=i, n_frames=1, started=100.0 + i, seconds=10.0) for i in range(2)]
    import flows.report as report

    captured = {}
    original = report.quietly
    report.quietly = lambda fn, **kw: captured.update(kw)
    try:
        report.stage_table({"enhance_chunk": chunks}, "s3://out/talk.mp4")
    finally:
        report.quietly = original
    row = captured["table"][0]
    assert (row["wall seconds"], row["work seconds"], row["reused"]) == (11.0, 20.0, "0/2")


def test_a_killed_run_s_temporary_directory_is_removed_by_the_next_run(tmp_path):
    """Temporary directories of dead processes on this host go; a live run's and another host's stay."""
    import socket

    from tests.test_storage_s3 import DEMO, Demo

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key, host = DEMO.key(a=1), socket.gethostname()
    folder = tmp_path / "demo"
    folder.mkdir()
    left = {name: folder / f".{key}.{name}.x1" for name in (f"{host}-{dead.pid}", f"{host}-{os.getpid()}",
                                                            f"elsewhere-{dead.pid}")}
    for d in left.values():
        (d / "partial").mkdir(parents=True)

    def produce(out_dir):
        (out_dir / "x.txt").write_text("done")
        return Demo(file=str(out_dir / "x.txt"), files=())

    DEMO.run(str(tmp_path), produce, a=1)
    assert not left[f"{host}-{dead.pid}"].exists()
    assert left[f"{host}-{os.getpid()}"].exists() and left[f"elsewhere-{dead.pid}"].exists()


def test_non_square_pixels_keep_their_shape(models_dir, tiny, tmp_path):
    """An anamorphic input (pixels 4:3 wide) gives an output shown at the same shape."""
    import av

    from flows.lipsync_hq import lipsync_hq

    wide = tmp_path / "anamorphic.mp4"
    ffmpeg("-i", tiny["video"], "-vf", "setsar=4/3", "-c:v", "libx264", "-crf", "12", str(wide))
    out = tmp_path / "out.mp4"
    lipsync_hq(audio=tiny["audio"], video=str(wide), output=str(out), enhance=False,
               work_dir=str(tmp_path / "work"), dask_workers=0)
    with av.open(str(out)) as c:
        assert c.streams.video[0].sample_aspect_ratio == Fraction(4, 3)


def test_the_same_content_to_another_container_is_that_container(models_dir, tiny, tmp_path):
    """The final mux is keyed on the output's container: a re-run to .mkv never publishes MP4 bytes."""
    from flows.lipsync_hq import lipsync_hq

    for name in ("out.mp4", "out.mkv", "out.mov"):
        lipsync_hq(audio=tiny["audio"], video=tiny["video"], output=str(tmp_path / name), enhance=False,
                   work_dir=str(tmp_path / "work"), dask_workers=0)
    assert (tmp_path / "out.mkv").read_bytes()[:4] == b"\x1a\x45\xdf\xa3"        # Matroska (EBML)
    assert (tmp_path / "out.mp4").read_bytes()[4:8] == b"ftyp"
    assert (tmp_path / "out.mov").read_bytes()[4:12] in (b"ftypqt  ", b"wide\x00\x00\x00\x08")
    assert len(list((tmp_path / "work" / "final_mux").glob("*/manifest.json"))) == 3
    assert len(list((tmp_path / "work" / "lipsync").glob("*/manifest.json"))) == 1  # the rest reused
