"""Storage by URL against a real S3-compatible server: inputs, outputs, work area, bad credentials."""
from __future__ import annotations

import pickle
import time

import pytest

from core.errors import InputError
from core.storage import StorageAccessError, StorageUnreachableError, check_output, local_copy, publish
from core.products import Product
from core.stage import Stage
from core.workarea import content_sha256


def test_local_copy_and_publish_round_trip(s3, tmp_path):
    s3.mkdir("roundtrip")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 10_000)
    url = publish(src, "s3://roundtrip/dir/a.bin")
    assert url == "s3://roundtrip/dir/a.bin" and s3.cat("roundtrip/dir/a.bin") == src.read_bytes()
    with local_copy(url, "audio") as local:
        assert open(local, "rb").read() == src.read_bytes()
    assert content_sha256(url) == content_sha256(str(src))  # content, not path, decides


def test_missing_object_and_bucket(s3):
    s3.mkdir("present")
    with pytest.raises(InputError, match=r"audio s3://present/nope.wav: not found"):
        with local_copy("s3://present/nope.wav", "audio"):
            pass
    with pytest.raises(StorageAccessError, match="bucket absent-bucket does not exist"):
        check_output("s3://absent-bucket/out.mp4", [])


def test_wrong_credentials_fail_fast_and_clearly(s3_server, monkeypatch):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-never-logged")
    start = time.monotonic()
    with pytest.raises(StorageAccessError) as err:
        with local_copy("s3://present/a.wav", "audio"):
            pass
    assert time.monotonic() - start < 20
    msg = str(err.value)
    assert "audio s3://present/a.wav: access denied" in msg and "credentials" in msg
    assert "wrong-secret-never-logged" not in msg
    s3fs.S3FileSystem.clear_instance_cache()


def test_unreachable_endpoint_fails_fast(s3_server, monkeypatch):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(StorageUnreachableError, match=r"video s3://bucket/v.mp4: storage unreachable"):
        with local_copy("s3://bucket/v.mp4", "video"):
            pass
    assert time.monotonic() - start < 30
    s3fs.S3FileSystem.clear_instance_cache()


class Demo(Product):
    file: str
    files: tuple[str, ...]


DEMO = Stage("demo", version="1", product=Demo, key_inputs=lambda a: {"a": a})


def test_remote_work_area(s3, tmp_path):
    s3.mkdir("work")
    work = "s3://work/area"
    calls = []

    def produce(out_dir):
        calls.append(out_dir)
        (out_dir / "sub").mkdir()
        (out_dir / "sub" / "x.txt").write_text("hello")
        return Demo(file=str(out_dir / "sub" / "x.txt"), files=(str(out_dir / "sub" / "x.txt"),))

    first = DEMO.run(work, produce, a=1)
    assert first.file.startswith("s3://work/area/demo/") and first.file.endswith("/sub/x.txt")
    assert first.files == (first.file,) and not first.reused and first.key == DEMO.key(a=1)
    with local_copy(first.file) as local:
        assert open(local).read() == "hello"
    again = DEMO.run(work, produce, a=1)
    assert again.reused and len(calls) == 1 and again.file == first.file
    DEMO.run(work, produce, refresh=True, a=1)
    assert len(calls) == 2
    DEMO.run(work, produce, a=2)
    assert len(calls) == 3


@pytest.mark.parametrize("planted", [
    pickle.dumps({"file": "x"}),                                     # a pickle: never loaded
    b'{"file": "/etc/passwd", "files": [], "key": "k", "evil": 1}',   # a field the stage never writes
    b'{"file": 3, "files": []}',                                     # the wrong type
])
def test_a_manifest_that_is_not_the_stage_s_json_is_refused(s3, planted):
    """Whoever can write to a shared work area cannot make a stage trust what it did not write."""
    if not s3.exists("shared-work"):
        s3.mkdir("shared-work")
    work = f"s3://shared-work/{hash(planted)}"
    calls = []

    def produce(out_dir):
        calls.append(out_dir)
        (out_dir / "x.txt").write_text("made here")
        return Demo(file=str(out_dir / "x.txt"), files=())

    s3.pipe(f"{work[5:]}/demo/{DEMO.key(a=1)}/manifest.json", planted)
    assert DEMO.finished(work, a=1) is None
    done = DEMO.run(work, produce, a=1)
    assert len(calls) == 1 and not done.reused
    assert DEMO.finished(work, a=1) == done.model_copy(update={"reused": False})


def test_credentials_from_a_prefect_block(prefect_server, s3_server, s3, monkeypatch, tmp_path):
    import json

    import s3fs
    from prefect.blocks.system import Secret

    import core.storage

    s3.mkdir("blocked")
    s3.pipe("blocked/a.txt", b"from the bucket")
    Secret(value=json.dumps({"key": s3_server["AWS_ACCESS_KEY_ID"],
                             "secret": s3_server["AWS_SECRET_ACCESS_KEY"]})).save("test-s3-creds", overwrite=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv(core.storage.STORAGE_BLOCK_ENV, "test-s3-creds")
    saved_conf = dict(fsspec_conf := core.storage.fsspec.config.conf.setdefault("s3", {}))
    monkeypatch.setattr(core.storage, "_configured", False)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with local_copy("s3://blocked/a.txt") as local:
            assert open(local, "rb").read() == b"from the bucket"
    finally:
        fsspec_conf.clear()
        fsspec_conf.update(saved_conf)
        s3fs.S3FileSystem.clear_instance_cache()


def test_flow_with_refused_credentials_stops_at_once(prefect_server, models_dir, s3_server, s3, monkeypatch,
                                                      tmp_path):
    import s3fs

    import tasks.probe
    from flows.lipsync_hq import lipsync_hq

    s3.mkdir("guarded")
    s3.pipe("guarded/a.wav", b"RIFF")
    calls = []
    real = tasks.probe.probe
    monkeypatch.setattr(tasks.probe, "probe", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    out = tmp_path / "o.mp4"
    start = time.monotonic()
    try:
        with pytest.raises(StorageAccessError, match=r"audio s3://guarded/a.wav: access denied"):
            lipsync_hq(audio="s3://guarded/a.wav", video="s3://guarded/v.mp4", output=str(out),
                       work_dir=str(tmp_path / "w"))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert len(calls) == 1 and time.monotonic() - start < 60  # no retries, no storm
    assert list(tmp_path.iterdir()) == []  # nothing written at the output, no work area started
