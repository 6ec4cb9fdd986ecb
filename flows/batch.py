"""The ``batch`` flow: every (audio, video) pair under an input prefix -> a video under an output prefix.

Jobs come from a manifest (``jobs.json`` or ``jobs.csv`` at the input prefix, or one given; its inputs
must lie under the input prefix or ``allowed_roots``) or, by default, from names: ``talk.wav`` +
``talk.mp4`` under the same folder make the job ``talk``, whose output is ``<output prefix>/talk.mp4``;
jobs whose outputs would coincide fail. Idempotent: a job whose output exists for the same input
content and options (recorded in ``<output>.json`` beside it) is skipped. The rest run as subflows
named after their jobs, a bounded number at a time, sharing one Dask cluster; a failing job fails its
task run but never stops the others. Each run writes a report (a table artifact and
``<output prefix>/wav2lip-hq-report.json``), then ends Failed if any job failed. When the SyncNet
weights are present, the report also gives each output's lip-sync scores (offset, LSE-D, LSE-C) and
flags those whose LSE-C is under ``min_sync_confidence``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from core.errors import InputError
from core.options import RunOptions
from core.storage import is_remote, open_url, redact, refuse_credentials_in_url, url_to_fs

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
    sync: dict | None = None    # offset, lse_d, lse_c of the output (when the SyncNet weights are present)


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


def normalise(url: str) -> str:
    """``url`` with ``.`` and ``..`` resolved (local paths absolute, ``file://`` dropped), to compare prefixes."""
    url = url.removeprefix("file://")
    if "://" not in url:
        return os.path.abspath(url)
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"


def _under(url: str, root: str) -> bool:
    return url.startswith(root.rstrip("/") + "/")


def find_jobs(input_prefix: str, output_prefix: str, manifest: str | None = None,
              allowed_roots: list[str] | None = None) -> list[BatchJob]:
    """Jobs from a manifest (given, or jobs.json/jobs.csv at the prefix), else by matching names.

    A manifest's inputs must lie under ``input_prefix`` or one of ``allowed_roots``; jobs whose outputs
    coincide fail, each naming the others.
    """
    base = normalise(input_prefix)
    rel = {f: f[len(base) + 1:] for f in _list(base) if _under(f, base)}
    if manifest is None:
        for candidate in ("jobs.json", "jobs.csv"):
            url = _join(base, candidate)
            if url in rel:
                manifest = url
    if manifest:
        roots = [base, *(normalise(r) for r in allowed_roots or [] if r.strip())]
        jobs = _jobs_from_manifest(manifest, base, roots)
    else:
        jobs = _jobs_from_names(rel)
    for job in jobs:
        if job.error is None:
            try:
                job.output = safe_output(output_prefix, job.name)
            except ValueError as exc:
                job.error = str(exc)
    _fail_collisions(jobs)
    return jobs


def _jobs_from_names(rel: dict[str, str]) -> list[BatchJob]:
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
        jobs.append(job)
    return jobs


def _read_manifest(manifest: str) -> list:
    """The manifest's rows; a manifest that cannot be parsed at all fails the batch."""
    try:
        with open_url(manifest, "r") as f:
            text = f.read()
        if not manifest.endswith(".json"):
            return list(csv.DictReader(io.StringIO(text)))
        rows = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, csv.Error are all ValueErrors or below
        raise InputError(f"manifest {redact(manifest)}: not valid {'JSON' if manifest.endswith('.json') else 'CSV'}"
                         f" ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    rows = rows.get("jobs") if isinstance(rows, dict) else rows
    if not isinstance(rows, list):
        raise InputError(f"manifest {redact(manifest)}: expected a list of jobs (or {{\"jobs\": [...]}}) of "
                         f"name, audio, video")
    return rows


def _jobs_from_manifest(manifest: str, base: str, roots: list[str]) -> list[BatchJob]:
    """Rows of name, audio, video: paths relative to the input prefix, or URLs under ``roots``."""
    jobs = []
    for n, row in enumerate(_read_manifest(manifest), 1):
        where = f"manifest {redact(manifest)} row {n}"
        if not isinstance(row, dict):
            jobs.append(BatchJob(f"row{n}", None, None, None,
                                 error=f"{where}: expected an object of name, audio, video; got {_show(row)}"))
            continue
        name, audio, video = (None if row.get(k) in (None, "") else row.get(k) for k in ("name", "audio", "video"))
        wrong = [f"{k} {_show(v)}" for k, v in (("name", name), ("audio", audio), ("video", video))
                 if v is not None and not isinstance(v, str)]
        if wrong:
            jobs.append(BatchJob(name if isinstance(name, str) else f"row{n}", None, None, None,
                                 error=f"{where}: {', '.join(wrong)}: must be text"))
            continue
        audio_url, video_url = (p if p is None else normalise(p if "://" in p or p.startswith("/") else _join(base, p))
                                for p in (audio, video))
        if name is None:
            name = (posixpath.splitext(video_url[len(base) + 1:] if _under(video_url, base) else
                                       posixpath.basename(video_url))[0] if video_url else f"row{n}")
        job = BatchJob(name, audio_url, video_url, None)
        outside = [f"{k} {redact(p)}" for k, p, url in (("audio", audio, audio_url), ("video", video, video_url))
                   if url is not None and not any(_under(url, r) for r in roots)]
        if not audio or not video:
            job.error = f"{where}: needs audio and video"
        elif outside:
            job.error = (f"{where}: {' and '.join(outside)} not under the input prefix {redact(base)}; "
                         f"inputs from elsewhere need the batch's allowed_roots")
        jobs.append(job)
    return jobs


def _show(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:80]}"


def _fail_collisions(jobs: list[BatchJob]) -> None:
    """Jobs that would write the same output all fail (one would silently overwrite the other)."""
    by_output: dict[str, list[BatchJob]] = {}
    for job in jobs:
        if job.error is None and job.output:
            by_output.setdefault(job.output, []).append(job)
    for output, group in by_output.items():
        for job in group if len(group) > 1 else ():
            others = ", ".join(repr(o.name) for o in group if o is not job)
            job.error = (f"job {job.name!r}: output {redact(output)} is also the output of job {others}; "
                         f"give the jobs distinct names")


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


def _make_parent(url: str) -> None:
    """Local folders must exist before a file is written in them; object stores have none to make."""
    if not is_remote(url):
        fs, path = url_to_fs(url)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)


def _run(job: BatchJob, options: dict, dask_address: str | None) -> str:
    """Run ``job`` unless its output is current; ``"done"`` or ``"skipped"``."""
    from flows.lipsync_hq import lipsync_hq

    fp = fingerprint(job, options)
    if already_done(job, fp):
        return "skipped"
    _make_parent(job.output)
    run_name = f"job-{job.name}"  # a callable: a string would be formatted with the parameters
    lipsync_hq.with_options(flow_run_name=lambda: run_name)(
        audio=job.audio, video=job.video, output=job.output, dask_address=dask_address, **options)
    fs, path = url_to_fs(job.output)
    fs.pipe_file(path + ".json", json.dumps({"fingerprint": fp, "audio": job.audio, "video": job.video,
                                             "options": options}).encode())
    return "done"


@task(name="run_job", task_run_name="job-{job.name}", retries=0, cache_policy=NO_CACHE, persist_result=False)
def run_job(job: BatchJob, options: dict, dask_address: str | None) -> BatchJob | State:
    """One pair through the ``lipsync_hq`` subflow. A failure ends this task run Failed (its data the
    job, with the error) without raising, so the batch goes on with the others."""
    start = time.perf_counter()
    if job.error is None:
        try:
            job.status = _run(job, options, dask_address)
        except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the batch
            job.error = f"{type(exc).__name__}: {exc}"
    if job.error is None:
        job.sync = _sync_scores(job.output, options)
    job.seconds = round(time.perf_counter() - start, 2)
    if job.error is None:
        return job
    job.status, job.output = "failed", None
    return Failed(message=job.error, data=job)


def _sync_scores(output: str, options: dict) -> dict | None:
    """The output's scores, found in the work area where its run left them (computed if not)."""
    from core.workarea import default_work_root
    from tasks.score_sync import score_output

    scores = score_output(output, options.get("work_dir") or default_work_root(), device=options.get("device"))
    return scores.summary() if scores else None


def report_row(job: BatchJob, min_sync_confidence: float | None) -> dict:
    """A job as the report shows it; ``min_sync_confidence`` None (no SyncNet weights): no sync columns."""
    row = asdict(job)
    sync = row.pop("sync")
    if min_sync_confidence is not None:
        row.update(sync or dict.fromkeys(("offset", "lse_d", "lse_c")))
        row["low_sync"] = None if sync is None else sync["lse_c"] < min_sync_confidence
    return row


class BatchFailed(RuntimeError):
    """Some jobs of a batch failed; ``report`` is the batch's report."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)  # (the report is pickled with __dict__, not args)
        self.report = report


def _outcome(future: Any, job: BatchJob) -> BatchJob:
    got = future.result(raise_on_failure=False)
    if isinstance(got, BatchJob):
        return got
    # run_job itself broke (not the job's pipeline, which it catches)
    return replace(job, status="failed", output=None, error=f"{type(got).__name__}: {got}")


@flow(name="wav2lip-hq-batch", log_prints=True)
def batch(
    input_prefix: str,
    output_prefix: str,
    manifest: str | None = None,
    max_concurrent: Annotated[int, Field(ge=1, le=64)] = 2,
    options: dict[str, Any] | None = None,
    dask_workers: Annotated[int | None, Field(ge=0)] = None,
    allowed_roots: list[str] | None = None,
    min_sync_confidence: Annotated[float, Field(ge=0)] = 4.0,
) -> dict | State:
    """Lip-sync every (audio, video) pair under an input prefix into an output prefix.

    The run ends Failed ("k of N jobs failed") when any job failed, after every job ran and the
    report was written.

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
        allowed_roots: Other prefixes or URLs a manifest's audio and video may come from, e.g.
            ["s3://media/voices"] (default: none; only files under the input prefix).
        min_sync_confidence: Outputs whose lip-sync confidence (LSE-C) is below this are flagged
            low_sync in the report (needs syncnet_v2.model; Wav2Lip on LRS2 scores about 7.8).
    """
    from flows import report
    from flows.runners import local_cluster, plan_local_cluster
    from tasks.score_sync import syncnet_present

    for role, url in (("input_prefix", input_prefix), ("output_prefix", output_prefix), ("manifest", manifest),
                      *(("allowed_roots", root) for root in allowed_roots or [])):
        if url:
            refuse_credentials_in_url(url, role)
    options = dict(options or {})
    RunOptions(**{k: v for k, v in options.items() if k != "dask_address"})  # every job's options, checked once
    jobs = find_jobs(input_prefix, output_prefix, manifest, allowed_roots)
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
        with ThreadPoolTaskRunner(max_workers=max_concurrent) as runner:
            futures = [runner.submit(run_job, {"job": j, "options": options, "dask_address": dask_address})
                       for j in jobs]
            done = [_outcome(f, j) for f, j in zip(futures, jobs)]
    finally:
        if cluster is not None:
            cluster.close()
    summary = {s: sum(j.status == s for j in done) for s in ("done", "skipped", "failed")}
    threshold = min_sync_confidence if syncnet_present() else None
    rows = [report_row(j, threshold) for j in done]
    sync = {} if threshold is None else {"min_sync_confidence": threshold,
                                         "low_sync": [r["name"] for r in rows if r["low_sync"]]}
    result = {"input_prefix": redact(input_prefix), "output_prefix": redact(output_prefix), **summary, **sync,
              "jobs": rows}
    report_url = _join(output_prefix, REPORT_NAME)
    _make_parent(report_url)
    fs, path = url_to_fs(report_url)
    fs.pipe_file(path, json.dumps(result, indent=1).encode())
    report.quietly(_table, result)
    print(f"batch: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed")
    if sync.get("low_sync"):
        print(f"batch: lip-sync confidence under {threshold} in {', '.join(sync['low_sync'])}")
    if summary["failed"]:
        message = f"{summary['failed']} of {len(done)} jobs failed"
        return Failed(message=message, data=BatchFailed(message, result))
    return result


def _table(result: dict) -> None:
    from prefect.artifacts import create_table_artifact

    sync = ("offset", "lse_d", "lse_c", "low_sync") if "min_sync_confidence" in result else ()
    rows = [{"job": j["name"], "status": j["status"], "output": j["output"] or "", "seconds": j["seconds"],
             **{k: j[k] for k in sync}, "error": j["error"] or ""} for j in result["jobs"]]
    create_table_artifact(table=rows, key="batch-report", description="wav2lip-hq batch: one row per job")
