"""Prefect/Dask side of the benchmarks: a Prefect server for the run, the flow as a child process, and
enhancement throughput on a Dask ``LocalCluster`` of k single-threaded workers.

    .venv/bin/python -m bench.orchestration flow --audio a.wav --video v.mp4 --out o.mp4 [--dask-workers K]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from core.options import RunOptions
from core.products import Chunk, SyncedVideo


# ------------------------------------------------------------------------------------ Prefect server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(timeout: float = 180.0):
    """A Prefect server of our own (own PREFECT_HOME and SQLite file) for this run; yields
    (api_url, start-up seconds). Flow processes and Dask workers get PREFECT_API_URL, so none of them
    starts a temporary server of its own."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-prefect-") as home:
        env = dict(os.environ, PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_UI_ENABLED="false")
        env.pop("PREFECT_API_URL", None)
        prefect = str(Path(sys.executable).with_name("prefect"))
        log = open(Path(home) / "server.log", "wb")
        t = time.perf_counter()
        proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/api"
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"prefect server exited: {(Path(home) / 'server.log').read_text()[-800:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.perf_counter() - t > timeout:
                    raise RuntimeError("prefect server did not start in time")
                time.sleep(0.5)
            yield url, time.perf_counter() - t, home
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


# -------------------------------------------------------------------------------------- flow child
def stage_walls(work: str | Path) -> dict:
    """What a flow run left in its (local) work area: each stage's wall seconds (a mapped stage: from
    its first chunk's start to its last chunk's end), the enhancement chunks and the workers that ran
    them, and the faces restored."""
    from bench.pipeline import count_faces

    runs: dict[str, list[dict]] = {}
    for m in Path(work).glob("*/*/manifest.json"):
        runs.setdefault(m.parent.parent.name, []).append(json.loads(m.read_text()))
    walls = {name: max(r["started"] + r["seconds"] for r in rs) - min(r["started"] for r in rs)
             for name, rs in runs.items()}
    chunks = runs.get("enhance_chunk", [])
    synced = SyncedVideo.model_validate(runs["lipsync"][0])
    return {"stages": walls, "chunks": len(chunks), "chunk_workers": len({c["worker"] for c in chunks}),
            "frames": synced.n_frames, "size": [synced.width, synced.height],
            "faces": count_faces(synced, synced.n_frames)}


def run_flow(audio: str, video: str, out: str, work: str, precision: str, chunk_frames: int | str,
             dask_workers: int | None, **options) -> dict:
    """The flow as it exists, enhancement on. ``dask_workers``: 0 no Dask, k a local cluster of k
    workers, None the flow's own default plan. ``options``: other flow parameters (``upscale``, ...).

    The flow maps enhancement over a Dask cluster of its own making (flows/runners.py, parameter
    ``dask_workers``). For a flow without that parameter, a DaskTaskRunner on a LocalCluster is given
    as the flow's task runner instead (with torch's thread count set in the workers' environment:
    Dask's nanny sets OMP_NUM_THREADS=1 by default).
    """
    import inspect

    from flows.lipsync_hq import lipsync_hq

    kwargs = {"audio": audio, "video": video, "output": out, "enhance": True, "precision": precision,
              "chunk_frames": chunk_frames, "work_dir": work, **options}
    flow, plan = lipsync_hq, None
    if "dask_workers" in inspect.signature(lipsync_hq.fn).parameters:
        kwargs["dask_workers"] = dask_workers
        if dask_workers != 0:
            from flows.runners import plan_local_cluster

            p = plan_local_cluster(dask_workers)
            plan = {"n_workers": p.n_workers, "threads_per_worker": p.threads_per_worker}
    elif dask_workers != 0:
        from prefect_dask import DaskTaskRunner

        n = dask_workers or 1
        threads = max(1, (os.cpu_count() or 1) // n)
        env = {k: os.environ[k] for k in ("PREFECT_API_URL", "WAV2LIP_HQ_MODELS_DIR", "WAV2LIP_HQ_FFMPEG")
               if k in os.environ}
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        flow = lipsync_hq.with_options(task_runner=DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True, "env": env,
                            "dashboard_address": None}))
        plan = {"n_workers": n, "threads_per_worker": threads, "flow_level_runner": True}
    t = time.perf_counter()
    flow(**kwargs)
    return {"total": time.perf_counter() - t, "dask_workers": dask_workers, "plan": plan, **stage_walls(work)}


# -------------------------------------------------------------------------------------- scaling
def _warm(precision: str) -> int:
    """Load GFPGAN and run it once in this worker (model load and first-call set-up not timed)."""
    import numpy as np
    import torch

    from models.loading import get_restorer
    from models.restorer import restore_faces

    net, dev = get_restorer("GFPGANv1.4.pth", "cpu", "auto", precision)
    restore_faces(net, [np.full((512, 512, 3), 128, np.uint8)], dev, precision=precision)
    return torch.get_num_threads()


def _enhance(chunk: Chunk, synced: SyncedVideo, opts: RunOptions, work_root: str) -> Chunk:
    from tasks.enhance_chunk import enhance_chunk_task

    return enhance_chunk_task.fn(chunk, synced, opts, work_root)


def enhance_throughput(synced: SyncedVideo, chunks: list[Chunk], n_faces: int, work_root: str, workers: int,
                       threads: int, precision: str) -> dict:
    """Wall time of the enhance_chunk stage over ``chunks`` on ``workers`` Dask workers of ``threads``
    threads each, made by the flow's own ``local_cluster`` (its worker environment and scheduling).
    ``work_root`` must be new: a chunk finished there is not enhanced again."""
    from distributed import Client, wait

    from bench.load import CpuShare
    from flows.runners import local_cluster

    opts = RunOptions(precision=precision, device="cpu", dask_workers=0)
    with local_cluster(workers, threads) as cluster, Client(cluster) as client:
        addrs = list(client.scheduler_info()["workers"])
        got = client.gather([client.submit(_warm, precision, workers=[a], pure=False) for a in addrs])
        with CpuShare() as share:
            futs = [client.submit(_enhance, c, synced, opts, work_root, pure=False) for c in chunks]
            wait(futs)
        if any(f.result().reused for f in futs):
            raise RuntimeError(f"enhance_chunk reused finished chunks in {work_root}: nothing was measured")
    return {"workers": workers, "threads": threads, "torch_threads": got, "wall": share.wall,
            "cpu": share.ours, "others_cores": share.others, "faces": n_faces, "faces_per_s": n_faces / share.wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flow", help="run the Prefect flow once (child of the overhead benchmark)")
    f.add_argument("--audio", required=True)
    f.add_argument("--video", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--precision", default="bf16")
    f.add_argument("--chunk-frames", default="auto", help="a number, or auto")
    f.add_argument("--dask-workers", default="1", help="0: no Dask; k: k workers; default: the flow's plan")
    f.add_argument("--upscale", type=int, default=1)
    f.add_argument("--gfpgan", default="1.4")
    args = p.parse_args()
    workers = None if args.dask_workers == "default" else int(args.dask_workers)
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as work:
        chunk_frames = args.chunk_frames if args.chunk_frames == "auto" else int(args.chunk_frames)
        res = run_flow(args.audio, args.video, args.out, work, args.precision, chunk_frames, workers,
                       upscale=args.upscale, gfpgan=args.gfpgan)
    print("BENCH_RESULT " + json.dumps(res), flush=True)

if __name__ == "__main__":
    main()
