"""The ``batch`` flow: every (audio, video) pair under an input prefix -> a video under an output prefix.

Jobs come from a manifest (``jobs.json`` or ``jobs.csv`` at the input prefix, or one given) or, by
default, from names: ``talk.wav`` + ``talk.mp4`` under the same folder make the job ``talk``, whose
output is ``<output prefix>/talk.mp4``. Idempotent: a job whose output exists for the same input
content and options (recorded in ``<output>.json`` beside it) is skipped. The rest run as subflows,
a bounded number at a time, sharing one Dask cluster; a failing job never stops the others. Each run
writes a report: a table artifact and ``<output prefix>/wav2lip-hq-report.json``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from core.options import RunOptions
from core.storage import is_remote, open_url, redact, url_to_fs

AUDIO_EXTS = {".wav", ".mp3", ".m4a", ".aac", ".flac"}
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".jpg", ".jpeg", ".png"}
REPORT_NAME = "wav2lip-hq-report.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BatchJob:
    """One (audio, video) pair of a batch and how it went."""

    name: str
    audio: str | None
    video: str | None
    output: str | None
    error: str | None = None
    status: str = "pending"
    seconds: float = 0.0


def _join(prefix: str, rel: str) -> str:
    return prefix.rstrip("/") + "/" + rel


def safe_output(output_prefix: str, name: str) -> str:
    """The output URL for a job name; no name can place it outside ``output_prefix``."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise ValueError(f"job name {name!r} would leave the output prefix")
    clean = [_SAFE.sub("_", p).lstrip(".") or "_" for p in parts]
    return _join(output_prefix, posixpath.join(*clean) + ".mp4")


def _list(prefix: str) -> list[str]:
    fs, root = url_to_fs(prefix)
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = sorted(fs.find(root))
    to_url = (lambda p: f"{proto}://{p}") if is_remote(prefix) else (lambda p: p)
    return [to_url(p) for p in files]


def find_jobs(input_prefix: str, output_prefix: str, manifest: str | None = None) -> list[BatchJob]:
    """Jobs from a manifest (given, or jobs.json/jobs.csv at the prefix), else by matching names."""
    files = _list(input_prefix)
    base = input_prefix.rstrip("/")
    rel = {f: f[len(base) + 1:] for f in files if f.startswith(base + "/")}
    if manifest is None:
        for candidate in ("jobs.json", "jobs.csv"):
            url = _join(base, candidate)
            if url in rel:
                manifest = url
    if manifest:
        return _jobs_from_manifest(manifest, base, output_prefix)
    groups: dict[str, dict[str, list[str]]] = {}
    for url, r in rel.items():
        stem, ext = posixpath.splitext(r)
        kind = "audio" if ext.lower() in AUDIO_EXTS else "video" if ext.lower() in VIDEO_EXTS else None
        if kind:
            groups.setdefault(stem, {"audio": [], "video": []})[kind].append(url)
    jobs = []
    for stem, g in sorted(groups.items()):
        job = BatchJob(stem, g["audio"][0] if g["audio"] else None, g["video"][0] if g["video"] else None, None)
        if len(g["audio"]) != 1 or len(g["video"]) != 1:
            job.error = (f"job {stem}: needs exactly one audio ({'/'.join(sorted(AUDIO_EXTS))}) and one video "
                         f"or image ({'/'.join(sorted(VIDEO_EXTS))}); found {len(g['audio'])} and {len(g['video'])}")
        _assign_output(job, output_prefix)
        jobs.append(job)
    return jobs


def _assign_output(job: BatchJob, output_prefix: str) -> None:
    try:
        job.output = safe_output(output_prefix, job.name)
    except ValueError as exc:
        job.error = job.error or str(exc)


def _jobs_from_manifest(manifest: str, base: str, output_prefix: str) -> list[BatchJob]:
    """Rows of name, audio, video (relative to the input prefix, or full URLs)."""
    with open_url(manifest, "r") as f:
        text = f.read()
    if manifest.endswith(".json"):
        rows = json.loads(text)
        rows = rows["jobs"] if isinstance(rows, dict) else rows
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    jobs = []
    for i, row in enumerate(rows):
        audio, video = row.get("audio"), row.get("video")
        name = row.get("name") or (posixpath.splitext(video)[0] if video else f"job{i}")
        resolve = (lambda p: p if (p is None or "://" in p or p.startswith("/")) else _join(base, p))
        job = BatchJob(name, resolve(audio), resolve(video), None)
        if not audio or not video:
            job.error = f"manifest {redact(manifest)} row {i + 1}: needs audio and video"
        _assign_output(job, output_prefix)
        jobs.append(job)
    return jobs


def content_id(url: str) -> str:
    """A cheap identity of an object's content: the ETag and size for object stores, SHA-256 locally."""
    fs, path = url_to_fs(url)
    if is_remote(url):
        info = fs.info(path)
        etag = info.get("ETag") or info.get("etag") or info.get("md5")
        if etag:
            return f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
    from core.workarea import content_sha256

    return "sha256:" + content_sha256(url)


def fingerprint(job: BatchJob, options: dict) -> str:
    blob = json.dumps({"audio": content_id(job.audio), "video": content_id(job.video), "options": options},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def already_done(job: BatchJob, fp: str) -> bool:
    fs, path = url_to_fs(job.output)
    try:
        with fs.open(path + ".json", "r") as f:
            record = json.load(f)
    except (FileNotFoundError, ValueError):
        return False
    return record.get("fingerprint") == fp and fs.exists(path)


@task(name="run_job", task_run_name="job-{job.name}", retries=0, cache_policy=NO_CACHE, persist_result=False)
def run_job(job: BatchJob, options: dict, dask_address: str | None) -> BatchJob:
    """One pair through the ``lipsync_hq`` subflow; failures are recorded, never raised."""
    from flows.lipsync_hq import lipsync_hq

    start = time.perf_counter()
    if job.error:
        job.status = "failed"
        return job
    try:
        fp = fingerprint(job, options)
        if already_done(job, fp):
            job.status = "skipped"
            return job
        lipsync_hq(audio=job.audio, video=job.video, output=job.output, dask_address=dask_address, **options)
        fs, path = url_to_fs(job.output)
        fs.pipe_file(path + ".json", json.dumps({"fingerprint": fp, "audio": job.audio, "video": job.video,
                                                 "options": options}).encode())
        job.status = "done"
    except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the batch
        job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
    job.seconds = round(time.perf_counter() - start, 2)
    return job


@flow(name="wav2lip-hq-batch", log_prints=True)
def batch(
    input_prefix: str,
    output_prefix: str,
    manifest: str | None = None,
    max_concurrent: Annotated[int, Field(ge=1, le=64)] = 2,
    options: dict[str, Any] | None = None,
    dask_workers: Annotated[int | None, Field(ge=0)] = None,
) -> dict:
    """Lip-sync every (audio, video) pair under an input prefix into an output prefix.

    Args:
        input_prefix: Folder or bucket prefix holding the pairs, e.g. s3://media/incoming
            (name.wav + name.mp4 make the job 'name').
        output_prefix: Where name.mp4 results and wav2lip-hq-report.json go, e.g. s3://media/lipsynced.
        manifest: JSON or CSV listing name, audio, video (default: jobs.json or jobs.csv at the input
            prefix, else names are matched).
        max_concurrent: Jobs running at the same time.
        options: Options of the wav2lip-hq flow applied to every job, e.g. {"upscale": 2}.
        dask_workers: Size of the local Dask cluster the jobs share (default: sized to the machine;
            0: no Dask).
    """
    from flows import report
    from flows.runners import local_cluster, plan_local_cluster

    options = dict(options or {})
    RunOptions(**{k: v for k, v in options.items() if k != "dask_address"})  # every job's options, checked once
    jobs = find_jobs(input_prefix, output_prefix, manifest)
    print(f"{len(jobs)} jobs under {redact(input_prefix)}")
    cluster = None
    dask_address = options.pop("dask_address", None)
    if dask_address is None and dask_workers != 0 and any(j.error is None for j in jobs):
        plan = plan_local_cluster(dask_workers)
        cluster = local_cluster(plan.n_workers, plan.threads_per_worker, plan.gpus)
        dask_address = cluster.scheduler_address
    if dask_workers == 0:
        options["dask_workers"] = 0
    try:
        runner = ThreadPoolTaskRunner(max_workers=max_concurrent)
        with runner:
            futures = [runner.submit(run_job, {"job": j, "options": options, "dask_address": dask_address})
                       for j in jobs]
            done = [f.result() for f in futures]
    finally:
        if cluster is not None:
            cluster.close()
    summary = {s: sum(j.status == s for j in done) for s in ("done", "skipped", "failed")}
    result = {"input_prefix": redact(input_prefix), "output_prefix": redact(output_prefix), **summary,
              "jobs": [asdict(j) for j in done]}
    fs, path = url_to_fs(_join(output_prefix, REPORT_NAME))
    fs.pipe_file(path, json.dumps(result, indent=1).encode())
    report.quietly(_table, result)
    print(f"batch: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed")
    return result


def _table(result: dict) -> None:
    from prefect.artifacts import create_table_artifact

    rows = [{"job": j["name"], "status": j["status"], "output": j["output"] or "", "seconds": j["seconds"],
             "error": (j["error"] or "")[:300]} for j in result["jobs"]]
    create_table_artifact(table=rows, key="batch-report", description="wav2lip-hq batch: one row per job")
