"""Production path with real components: a Prefect server (SQLite), `prefect deploy`, a process worker,
`prefect deployment run ... -p`, the output landing in an S3 server, and the UI's run form in Chromium."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

PREFECT = str(Path(sys.executable).with_name("prefect"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = REPO / "docs" / "prefect-run-form.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free port with its own SQLite database."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",  # the UI is told where its API is
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((home / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    else:
        raise RuntimeError("prefect server did not start: " + (home / "server.log").read_text()[-2000:])
    client_env = {**env, "PREFECT_API_URL": api}
    yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": client_env, "home": home}
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


def prefect(server, *args, timeout=300, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([PREFECT, *args], cwd=REPO, env={**server["env"], **(env or {})}, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def deployed(server, s3_server):
    prefect(server, "work-pool", "create", "wav2lip-hq", "--type", "process")
    prefect(server, "--no-prompt", "deploy", "--all",
            env={"WAV2LIP_HQ_BATCH_INPUT": "s3://sched-in", "WAV2LIP_HQ_BATCH_OUTPUT": "s3://sched-out"})
    deployments = httpx.post(f"{server['api']}/deployments/filter", json={}).json()
    return {d["name"]: d for d in deployments}


def test_deployments_are_declared(deployed):
    assert {"on-demand", "bucket-batch"} <= set(deployed)
    schema = deployed["on-demand"]["parameter_openapi_schema"]["properties"]
    assert schema["audio"]["title"] == "audio" and "Speech to lip-sync to" in schema["audio"]["description"]
    assert all(p.get("description") for p in schema.values())  # every field of the UI form is explained
    assert schema["blend"]["maximum"] == 1.0 and schema["upscale"]["enum"] == [1, 2]
    batch = deployed["bucket-batch"]
    assert batch["parameters"]["input_prefix"] == "s3://sched-in"
    assert [s["schedule"]["cron"] for s in batch["schedules"]] == ["*/30 * * * *"]


def _put_tiny_pair(s3, tmp_path, bucket: str, name: str) -> None:
    from tests.conftest import ffmpeg, make_face_clip

    clip, audio = tmp_path / f"{name}.mp4", tmp_path / f"{name}.wav"
    make_face_clip(clip, 0.32, fps=25, size=256)
    ffmpeg("-i", str(clip), "-vn", str(audio))
    s3.put_file(str(audio), f"{bucket}/{name}.wav")
    s3.put_file(str(clip), f"{bucket}/{name}.mp4")


def _worker_env(models_dir, s3_server, work_dir) -> dict:
    """What an operator gives the worker: the weights, the storage credentials, a work area."""
    return {"WAV2LIP_HQ_MODELS_DIR": str(models_dir), "WAV2LIP_HQ_WORK_DIR": str(work_dir),
            **{k: v for k, v in s3_server.items() if k != "endpoint"}}


def _runs_of(server, deployment) -> list[dict]:
    runs = httpx.post(f"{server['api']}/flow_runs/filter", json={}).json()
    return [fr for fr in runs if fr["deployment_id"] == deployment["id"]]


def test_on_demand_deployment_with_its_defaults(server, deployed, models_dir, s3_server, s3, tmp_path):
    """`prefect deployment run` with only the three required parameters, as a user starts it: every
    option at its default (a local Dask cluster sized to the machine), in the worker's fresh process."""
    for b in ("dep-in", "dep-out", "dep-work"):
        s3.mkdir(b)
    _put_tiny_pair(s3, tmp_path, "dep-in", "a")
    r = prefect(server, "deployment", "run", "wav2lip-hq/on-demand", "-p", "audio=s3://dep-in/a.wav",
                "-p", "video=s3://dep-in/a.mp4", "-p", "output=s3://dep-out/result.mp4")
    assert "Created flow run" in r.stdout
    prefect(server, "worker", "start", "--pool", "wav2lip-hq", "--run-once", timeout=900,
            env=_worker_env(models_dir, s3_server, "s3://dep-work/w"))
    states = [fr["state"]["type"] for fr in _runs_of(server, deployed["on-demand"])]
    assert states == ["COMPLETED"], states
    assert s3.exists("dep-out/result.mp4") and s3.info("dep-out/result.mp4")["size"] > 1000
    assert s3.glob("dep-work/w/enhance_chunk/*/manifest.json")  # the S3 work area from the worker's setting
    # the run's artifacts, keyed per job: timings table, output link, before/after picture, progress
    from flows.report import artifact_key

    arts = {a["key"]: a for a in httpx.post(f"{server['api']}/artifacts/filter", json={}).json()}
    output = "s3://dep-out/result.mp4"
    for what in ("stage-timings", "output", "before-after", "enhancement-progress"):
        assert artifact_key(output, what) in arts, (what, sorted(arts))
    assert arts[artifact_key(output, "enhancement-progress")]["data"] == 100.0
    shown = arts[artifact_key(output, "output")]["data"]  # a markdown link: [text](address)
    assert shown.startswith("[s3://dep-out/result.mp4](http"), shown
    link = httpx.URL(shown[shown.index("](") + 2:-1])
    # presigned (SigV4, 7 days) for the output object: a browser opens it. (The test S3 server checks
    # credentials in headers only, so the link itself cannot be fetched from it.)
    assert link.scheme.startswith("http") and link.path == "/dep-out/result.mp4"
    assert link.params["X-Amz-Expires"] == "604800" and link.params["X-Amz-Signature"]


def test_scheduled_batch_with_its_defaults(server, deployed, models_dir, s3_server, s3, tmp_path):
    """The bucket-batch deployment exactly as its schedule starts it: no parameter but those declared
    in prefect.yaml, a fresh worker process, the default local Dask cluster. The run must end
    Completed with its report written (it once failed when the cluster closed)."""
    for b in ("sched-in", "sched-out"):
        s3.mkdir(b)
    _put_tiny_pair(s3, tmp_path, "sched-in", "talk")
    since = datetime.now(timezone.utc)
    prefect(server, "deployment", "run", "wav2lip-hq-batch/bucket-batch")
    prefect(server, "worker", "start", "--pool", "wav2lip-hq", "--run-once", timeout=900,
            env=_worker_env(models_dir, s3_server, tmp_path / "work"))
    runs = _runs_of(server, deployed["bucket-batch"])
    # a cron slot falling due during the test adds a second, identical run: it must complete too. One that
    # fell due earlier was run by an earlier test's worker on the shared pool, before these buckets existed
    ran = [fr["state"] for fr in runs if fr["state"]["type"] not in ("SCHEDULED", "PENDING")
           and (fr["start_time"] is None or datetime.fromisoformat(fr["start_time"]) >= since)]
    assert ran and all(st["type"] == "COMPLETED" for st in ran), [(st["type"], st["message"]) for st in ran]
    report = json.loads(s3.cat("sched-out/wav2lip-hq-report.json"))
    assert (report["done"], report["failed"]) == (1, 0), report
    assert s3.info("sched-out/talk.mp4")["size"] > 1000
    arts = httpx.post(f"{server['api']}/artifacts/filter", json={}).json()
    assert "batch-report" in {a["key"] for a in arts}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_ui_run_form_shows_our_parameters(server, deployed, tmp_path):
    url = f"{server['ui']}/deployments/deployment/{deployed['on-demand']['id']}/run"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=25000", "--window-size=1280,2200"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-1000:]
    for text in ("audio", "video", "output", "gfpgan", "on_no_face", "mask", "restore", "Speech to lip-sync to",
                 "Which face is lip-synced", "When the audio outlasts the video",
                 "Restoration strength", "Talking-face video, or a still portrait"):
        assert text in dom.stdout, text
    shot = tmp_path / "form.png"
    r = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0 and shot.stat().st_size > 10_000
    if os.environ.get("WAV2LIP_HQ_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
