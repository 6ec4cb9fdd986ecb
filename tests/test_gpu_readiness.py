"""What a GPU machine gets, checked on this CPU-only one: device selection, fp16 autocast, batch sizes,
and enhancement tasks that ask for a GPU on the Dask runners. (Cluster planning per GPU and the
out-of-memory batch split are in test_orchestration.py and test_models.py.)"""
from __future__ import annotations

import pytest
import torch

from core.errors import InputError
from core.options import RunOptions


@pytest.fixture
def two_gpus(monkeypatch):
    """torch as it looks on a machine with two CUDA devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_devices_are_chosen_and_checked(two_gpus):
    from models.checkpoint import resolve_device
    from models.precision import resolve_precision
    from tasks.probe import check_device

    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    for device in ("auto", "cuda", "cuda:1", "cpu"):
        check_device(RunOptions(device=device))
    check_device(RunOptions(device="cuda", precision="fp16"))  # fp16 is for GPUs
    with pytest.raises(InputError, match=r"device cuda:2: no such CUDA device here \(2 visible\)"):
        check_device(RunOptions(device="cuda:2"))
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cuda:1") == "fp16"


def test_fp16_autocast_on_cuda():
    from models.precision import autocast

    ctx = autocast("cuda", "auto")
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16
    assert autocast("cuda", "bf16").fast_dtype == torch.bfloat16
    assert not autocast("cuda", "fp32")._enabled


def test_batch_sizes_follow_the_device():
    from models.batching import default_batch

    assert default_batch("wav2lip", "cpu") == 16 and default_batch("gfpgan", "cpu") == 1
    assert default_batch("wav2lip", "cuda") == 128 and default_batch("gfpgan", torch.device("cuda", 1)) == 8


def test_enhancement_tasks_ask_for_a_gpu_where_the_runner_has_them(monkeypatch):
    import flows.runners
    from flows.runners import ClusterPlan, enhancement_runner

    monkeypatch.setenv("WAV2LIP_HQ_DASK_ADDRESS", "tcp://scheduler.example:8786")
    monkeypatch.setenv("WAV2LIP_HQ_DASK_GPU", "1")
    runner, needs_gpu = enhancement_runner()
    assert needs_gpu and type(runner).__name__ == "DaskTaskRunner"
    monkeypatch.setenv("WAV2LIP_HQ_DASK_GPU", "0")
    assert enhancement_runner()[1] is False
    monkeypatch.delenv("WAV2LIP_HQ_DASK_ADDRESS")
    # a local cluster on a machine with GPUs: one worker per GPU, each chunk asks for one
    monkeypatch.setattr(flows.runners, "plan_local_cluster",
                        lambda workers=None: ClusterPlan(n_workers=2, threads_per_worker=1, gpus=2))
    assert enhancement_runner()[1] is True
    assert enhancement_runner(dask_workers=0)[1] is False  # no Dask: chunks run in the flow's process
