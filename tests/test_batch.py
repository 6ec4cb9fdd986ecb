"""The ``batch`` flow: jobs from names or manifests, where inputs may come from, outputs, states, report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


FAST = {"options": {"enhance": False}, "dask_workers": 0}


def _pair(tiny: dict, folder: Path, name: str) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny["audio"], folder / f"{name}.wav")
    shutil.copyfile(tiny["video"], folder / f"{name}.mp4")


def _batch(**kwargs):
    """The batch's final state and the report it wrote."""
    from flows.batch import REPORT_NAME, batch

    state = batch(**FAST, **kwargs, return_state=True)
    return state, json.loads((Path(kwargs["output_prefix"]) / REPORT_NAME).read_text())


def _jobs(report: dict) -> dict[str, dict]:
    return {j["name"]: j for j in report["jobs"]}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------- names and S3
def test_batch_three_good_one_bad_then_idempotent(prefect_server, models_dir, tiny, portrait, s3):
    from flows.batch import REPORT_NAME, BatchFailed, batch

    s3.mkdir("batch-in")
    s3.mkdir("batch-out")
    for name in ("alice", "bob"):
        s3.put_file(tiny["audio"], f"batch-in/{name}.wav")
        s3.put_file(tiny["video"], f"batch-in/{name}.mp4")
    s3.put_file(tiny["audio"], "batch-in/nested/carol.wav")
    s3.put_file(str(portrait), "batch-in/nested/carol.png")
    s3.pipe("batch-in/dave.mp3", b"this is not audio at all")
    s3.put_file(tiny["video"], "batch-in/dave.mp4")

    with pytest.raises(BatchFailed, match="^1 of 4 jobs failed$") as failed:
        batch(input_prefix="s3://batch-in", output_prefix="s3://batch-out", max_concurrent=2, **FAST)
    result = failed.value.report
    assert (result["done"], result["skipped"], result["failed"]) == (3, 0, 1)
    bad = next(j for j in result["jobs"] if j["status"] == "failed")
    assert bad["name"] == "dave" and "audio s3://batch-in/dave.mp3: not a media file" in bad["error"]
    for key in ("batch-out/alice.mp4", "batch-out/bob.mp4", "batch-out/nested/carol.mp4"):
        assert s3.exists(key)
    assert not s3.exists("batch-out/dave.mp4")
    saved = json.loads(s3.cat(f"batch-out/{REPORT_NAME}"))
    assert saved["failed"] == 1 and {j["name"] for j in saved["jobs"]} == {"alice", "bob", "nested/carol", "dave"}

    before = {k: s3.info(k)["LastModified"] for k in s3.find("batch-out") if k.endswith(".mp4")}
    with pytest.raises(BatchFailed) as again:
        batch(input_prefix="s3://batch-in", output_prefix="s3://batch-out", **FAST)
    assert [again.value.report[s] for s in ("done", "skipped", "failed")] == [0, 3, 1]
    after = {k: s3.info(k)["LastModified"] for k in s3.find("batch-out") if k.endswith(".mp4")}
    assert after == before


def test_output_names_cannot_escape_the_prefix():
    from flows.batch import safe_output

    assert safe_output("s3://out", "a/b") == "s3://out/a/b.mp4"
    assert safe_output("s3://out", "we ird$name") == "s3://out/we_ird_name.mp4"
    assert safe_output("/data/out", ".hidden") == "/data/out/hidden.mp4"
    for evil in ("../x", "a/../../x", "/", "..", "a/../.."):
        with pytest.raises(ValueError):
            safe_output("s3://out", evil)
    assert safe_output("s3://out", "/abs/path").startswith("s3://out/")


# ---------------------------------------------------------------------------------- manifests
def test_manifest_inputs_stay_under_the_input_prefix(prefect_server, models_dir, tiny, tmp_path):
    """Whoever writes a manifest must not make the worker read and publish its other files."""
    src, elsewhere, out = tmp_path / "in", tmp_path / "voices", tmp_path / "out"
    _pair(tiny, src, "good")
    out.mkdir()
    elsewhere.mkdir()
    shutil.copyfile(tiny["audio"], elsewhere / "voice.wav")
    rows = [{"name": "good", "audio": "good.wav", "video": "./good.mp4"},
            {"name": "passwd", "audio": "/etc/passwd", "video": "good.mp4"},
            {"name": "climb", "audio": "../voices/voice.wav", "video": "good.mp4"},
            {"name": "dotdot", "audio": f"{src}/../voices/voice.wav", "video": "good.mp4"},
            {"name": "url", "audio": "good.wav", "video": "file:///etc/hostname"},
            {"name": "bucket", "audio": "s3://someone-else/x.wav", "video": "good.mp4"},
            {"name": "sibling", "audio": f"{src}-evil/x.wav", "video": "good.mp4"}]
    (src / "jobs.json").write_text(json.dumps(rows))

    state, report = _batch(input_prefix=str(src), output_prefix=str(out))
    jobs = _jobs(report)
    for n, row in enumerate(rows[1:], 2):
        job = jobs[row["name"]]
        path = row["audio"] if row["name"] != "url" else row["video"]
        assert f"row {n}" in job["error"] and path in job["error"] and "not under the input prefix" in job["error"]
        assert job["status"] == "failed" and job["output"] is None
    assert _files(out) == {"good.mp4", "good.mp4.json", "wav2lip-hq-report.json"}  # nothing else published
    assert jobs["good"]["status"] == "done" and state.message == "6 of 7 jobs failed"

    # roots the operator allows explicitly: those rows run, the rest are still refused
    state, report = _batch(input_prefix=str(src), output_prefix=str(out), allowed_roots=[str(elsewhere)])
    jobs = _jobs(report)
    assert {n for n, j in jobs.items() if j["status"] != "failed"} == {"good", "climb", "dotdot"}
    assert (jobs["good"]["status"], jobs["climb"]["status"]) == ("skipped", "done")
    assert jobs["passwd"]["status"] == "failed" and state.message == "4 of 7 jobs failed"


def test_colliding_outputs_fail_every_colliding_job(prefect_server, models_dir, tiny, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()  # (a missing output prefix has its own test)
    _pair(tiny, src, "ok")
    rows = [{"name": "a b", "audio": "ok.wav", "video": "ok.mp4"},
            {"name": "a_b", "audio": "ok.wav", "video": "ok.mp4"},
            {"name": "twice", "audio": "ok.wav", "video": "ok.mp4"},
            {"name": "twice", "audio": "ok.wav", "video": "ok.mp4"},
            {"name": "x", "audio": "ok.wav", "video": "ok.mp4"},
            {"audio": "ok.wav", "video": "x.mp4"},  # named x after its video
            {"name": "ok", "audio": "ok.wav", "video": "ok.mp4"}]
    (src / "jobs.json").write_text(json.dumps(rows))

    state, report = _batch(input_prefix=str(src), output_prefix=str(out))
    by_row = report["jobs"]
    assert [j["status"] for j in by_row] == ["failed"] * 6 + ["done"]
    for i, other in ((0, "'a_b'"), (1, "'a b'"), (2, "'twice'"), (3, "'twice'"), (4, "'x'"), (5, "'x'")):
        assert f"is also the output of job {other}" in by_row[i]["error"] and by_row[i]["output"] is None
    assert _files(out) == {"ok.mp4", "ok.mp4.json", "wav2lip-hq-report.json"}
    assert state.is_failed() and state.message == "6 of 7 jobs failed"


def test_local_output_folders_are_made_even_for_a_missing_prefix(prefect_server, models_dir, tiny, tmp_path):
    src, out = tmp_path / "in", tmp_path / "not" / "yet" / "out"
    _pair(tiny, src, "nested/carol")
    (src / "lonely.wav").write_bytes(b"")
    state, report = _batch(input_prefix=str(src), output_prefix=str(out))
    jobs = _jobs(report)
    assert jobs["nested/carol"]["status"] == "done" and (out / "nested" / "carol.mp4").stat().st_size > 1000
    assert jobs["lonely"]["status"] == "failed" and state.message == "1 of 2 jobs failed"


def test_malformed_manifest_rows_fail_alone(prefect_server, models_dir, tiny, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()  # (a missing output prefix has its own test)
    _pair(tiny, src, "good")
    rows = ["good.wav", 7, {"name": 5, "audio": "good.wav", "video": "good.mp4"},
            {"name": "n", "audio": 1, "video": "good.mp4"}, {"name": "m", "audio": "good.wav", "video": ["good.mp4"]},
            {"name": "good", "audio": "good.wav", "video": "good.mp4"}]
    manifest = src / "jobs.json"
    manifest.write_text(json.dumps({"jobs": rows}))
    state, report = _batch(input_prefix=str(src), output_prefix=str(out))
    assert [j["status"] for j in report["jobs"]] == ["failed"] * 5 + ["done"]
    for n, job in enumerate(report["jobs"][:5], 1):
        assert job["error"].startswith(f"manifest {manifest} row {n}: ")
    assert state.message == "5 of 6 jobs failed"


@pytest.mark.parametrize("text", [b"name,audio,video\ngood,good.wav,good.mp4\n", b'{"rows": []}', b"\x89PNG\r\n"])
def test_a_manifest_that_is_not_a_json_job_list_fails_the_batch(prefect_server, tmp_path, text):
    from flows.batch import batch

    (tmp_path / "jobs.json").write_bytes(text)
    state = batch(input_prefix=str(tmp_path), output_prefix=str(tmp_path / "out"), **FAST, return_state=True)
    assert state.is_failed() and f"manifest {tmp_path / 'jobs.json'}: " in state.message
    assert "\n" not in state.message.strip()
    assert "not valid JSON" in state.message or "expected a list of jobs" in state.message


# ---------------------------------------------------------------------------------- states and report
def test_a_failed_job_is_red_and_fails_the_batch_after_its_report(prefect_server, models_dir, tiny, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    src, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()  # (a missing output prefix has its own test)
    _pair(tiny, src, "good")
    _pair(tiny, src, "dave")
    (src / "dave.wav").write_bytes(b"this is not audio at all")
    long_name = "l" * 240
    (src / f"{long_name}.wav").write_bytes(b"")  # no video: an error of more than 300 characters

    state, report = _batch(input_prefix=str(src), output_prefix=str(out))
    assert state.is_failed() and state.message == "2 of 3 jobs failed"
    jobs = _jobs(report)
    assert [jobs[n]["status"] for n in ("dave", "good", long_name)] == ["failed", "done", "failed"]
    assert jobs["good"]["output"] == str(out / "good.mp4")
    assert jobs["dave"]["output"] is None and jobs[long_name]["output"] is None
    assert len(jobs[long_name]["error"]) > 300

    batch_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as c:
        tasks = {t.name: t.state.type.value for t in c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[batch_id]))) if t.name.startswith("job-")}
        subflows = {f.name: f.state.type.value for f in c.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[batch_id])))}
        [table] = c.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["batch-report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[batch_id])))
    assert tasks == {"job-good": "COMPLETED", "job-dave": "FAILED", f"job-{long_name}": "FAILED"}
    assert subflows == {"job-good": "COMPLETED", "job-dave": "FAILED"}  # one subflow per job that ran
    rows = {r["job"]: r for r in (json.loads(table.data) if isinstance(table.data, str) else table.data)}
    assert rows[long_name]["error"] == jobs[long_name]["error"]  # the whole message
    assert (rows["dave"]["output"], rows["good"]["output"]) == ("", str(out / "good.mp4"))

    # every job done or skipped: the batch completes, and a skipped job lists its output
    for p in src.glob("[dl]*"):
        p.unlink()
    state, report = _batch(input_prefix=str(src), output_prefix=str(out))
    assert state.is_completed() and state.result() == report
    assert report["jobs"] == [{**jobs["good"], "status": "skipped", "seconds": report["jobs"][0]["seconds"]}]


def test_credentials_in_a_prefix_are_refused_and_never_shown(tmp_path):
    from core.errors import InputError
    from flows.batch import batch

    with pytest.raises(InputError, match=r"input_prefix s3://bucket/in: credentials in the URL") as err:
        batch.fn(input_prefix="s3://AKIAKEY:VerySecret@bucket/in", output_prefix=str(tmp_path / "out"))
    assert "VerySecret" not in str(err.value) and not (tmp_path / "out").exists()
