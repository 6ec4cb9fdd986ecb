"""Where enhancement chunks run: a Dask cluster (local, existing scheduler, or one worker per GPU).

The flow runs the single-stream stages in its own process (all cores or the first GPU) and maps
enhancement over chunks on the runner chosen here. Every Dask worker is given the Prefect API URL of
the run, so it reports to the same server instead of starting a temporary one of its own, and its
torch thread count, so workers sharing a machine do not fight over cores.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch


def current_api_url() -> str | None:
    """The Prefect API this process talks to: the configured one, or the temporary local server."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return url
    try:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer._instances.get(None)  # the one ephemeral mode starts
        if server is not None and getattr(server, "server_process", None) is not None:
            return server.api_url
    except ImportError:
        pass
    return None


@dataclass(frozen=True)
class ClusterPlan:
    n_workers: int
    threads_per_worker: int
    gpus: int


def plan_local_cluster(n_workers: int | None = None, cpus: int | None = None, mem_gb: float | None = None,
                       gpus: int | None = None) -> ClusterPlan:
    """Size a local cluster to the machine: one worker per GPU when there are GPUs; otherwise one
    per core, at most one per ~3 GB of memory (a CPU GFPGAN worker peaks near 1.9 GB: measured with
    one face per call, fp32; bf16 1.7 GB) and 8 in all."""
    cpus = cpus or os.cpu_count() or 1
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if mem_gb is None:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if n_workers is None:
        n_workers = gpus if gpus else max(1, min(cpus, int(mem_gb // 3), 8))
    return ClusterPlan(n_workers, max(1, cpus // n_workers), gpus)


def worker_env(threads: int) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "WAV2LIP_HQ_TORCH_THREADS": str(threads)}
    url = current_api_url()
    if url:
        env["PREFECT_API_URL"] = url
    for name in ("WAV2LIP_HQ_MODELS_DIR", "WAV2LIP_HQ_WORK_DIR", "WAV2LIP_HQ_FFMPEG", "WAV2LIP_HQ_STORAGE_BLOCK"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def nanny_environ() -> dict:
    """Dask's pre-spawn environment for worker processes, without ``MALLOC_TRIM_THRESHOLD_``.

    Setting that variable (Dask sets 65536) also switches off glibc's dynamic mmap threshold, so every
    large tensor a network allocates is mmap'd, page-faulted in and unmapped again on each call:
    measured here, GFPGAN in a Dask worker took 3.17 s/face (6.1 s of CPU) with it and 1.95 s/face
    (3.8 s of CPU) without, the same as in a plain process (2.05 s).
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def local_cluster(n_workers: int, threads_per_worker: int, gpus: int = 0, **kwargs):
    """A Dask cluster on this machine, created when the runner first needs it (inside the run)."""
    import dask
    import distributed  # noqa: F401 - registers its config defaults (see below)

    # dask.config.set on a key of a section that does not exist yet removes the whole section on
    # exit: had `distributed` been first imported inside the block, its defaults would vanish with
    # it and closing the cluster would fail with KeyError: 'distributed'
    # worker-saturation 1.0: a worker is handed its next chunk when it has finished one, so no chunk
    # waits queued on a busy worker while another goes idle at the end of the run. No statistical
    # profiler sampling every thread's stack each 10 ms and an event-loop tick each second instead of
    # every 20 ms: a worker's wake-ups cut into the network's threads, which take every core it has
    # (measured, 100 faces on one 2-thread worker: 46.7 s with Dask's defaults, 44.7 without them, 43.5 in
    # a plain process; median of two interleaved runs each)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": nanny_environ(),
                          "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.profile.enabled": False,
                          "distributed.admin.tick.interval": "1s"}):
        return _local_cluster(n_workers, threads_per_worker, gpus, **kwargs)


def _local_cluster(n_workers: int, threads_per_worker: int, gpus: int, **kwargs):
    # Dask's nanny writes its pre-spawn variables (one OpenMP, MKL and OpenBLAS thread, a hash seed) into
    # this process's environment before it spawns a worker, and leaves them: every later child of this
    # process would start with one thread. The workers got them when they were spawned: put ours back
    saved = {k: os.environ.get(k) for k in (*nanny_environ(), "PYTHONHASHSEED")}
    try:
        return _start_cluster(n_workers, threads_per_worker, gpus, **kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start_cluster(n_workers: int, threads_per_worker: int, gpus: int, **kwargs):
    env = worker_env(threads_per_worker)
    cluster = None
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(n_workers=n_workers, threads_per_worker=1, resources={"GPU": 1},
                                       env=env, **kwargs)
        except ImportError:
            # without dask-cuda (pip install 'wav2lip-hq[gpu]') one worker drives the first GPU
            logging.getLogger("wav2lip_hq").warning(
                "dask-cuda is not installed: one Dask worker will use cuda:0 for all chunks")
            n_workers, kwargs = 1, {**kwargs, "resources": {"GPU": gpus}}
    if cluster is None:
        from distributed import LocalCluster

        logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines drown the run's own
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, env=env,
                               dashboard_address=":0", silence_logs=logging.WARNING, **kwargs)
    try:
        # a worker that cannot start would leave tasks waiting forever: fail loudly instead
        cluster.wait_for_workers(n_workers, timeout=180)
    except Exception:
        cluster.close()
        raise
    return cluster


def _scheduler(dask_address: str | None) -> tuple[str | None, bool]:
    """The existing scheduler to use (``dask_address`` or ``WAV2LIP_HQ_DASK_ADDRESS``), and whether its
    enhancement tasks must ask for a GPU (``WAV2LIP_HQ_DASK_GPU=1``)."""
    address = dask_address or os.environ.get("WAV2LIP_HQ_DASK_ADDRESS") or None
    return address, os.environ.get("WAV2LIP_HQ_DASK_GPU", "0") == "1"


def enhancement_workers(dask_address: str | None = None, dask_workers: int | None = None) -> int:
    """How many enhancement chunks run at once on the runner :func:`enhancement_runner` gives.

    An existing scheduler is asked now: its workers' threads (or their GPU resources when tasks ask for
    one). A local cluster is not started for this: its plan says.
    """
    address, gpu = _scheduler(dask_address)
    if address:
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
        slots = sum(w.get("resources", {}).get("GPU", 0) if gpu else w["nthreads"] for w in workers)
        return max(1, int(slots))
    if dask_workers == 0:
        return 1
    plan = plan_local_cluster(dask_workers)
    if plan.gpus and importlib.util.find_spec("dask_cuda") is None:
        return 1  # local_cluster then runs one worker for all GPUs
    return plan.n_workers


def enhancement_runner(dask_address: str | None = None, dask_workers: int | None = None):
    """The task runner for enhancement chunks, and whether its tasks must ask for a GPU.

    ``dask_address`` (or ``WAV2LIP_HQ_DASK_ADDRESS``): an existing scheduler whose workers import this
    project. ``dask_workers=0``: no Dask, chunks run one at a time in the flow's process.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    address, gpu = _scheduler(dask_address)
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address), gpu
    if dask_workers == 0:
        return ThreadPoolTaskRunner(max_workers=1), False
    from prefect_dask import DaskTaskRunner

    plan = plan_local_cluster(dask_workers)
    runner = DaskTaskRunner(cluster_class=local_cluster,
                            cluster_kwargs={"n_workers": plan.n_workers,
                                            "threads_per_worker": plan.threads_per_worker,
                                            "gpus": plan.gpus})
    return runner, plan.gpus > 0
