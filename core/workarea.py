"""Content-keyed work area: every stage output lives under ``<root>/<stage>/<key>/`` with a manifest.

``root`` is a local path or any fsspec URL (``s3://bucket/work``), so Dask workers on other machines
reach the chunks. A stage's key hashes what determines its output: the content of its inputs (or the
key of the stage that made them), its parameters, the SHA-256 of the weights it uses, and the stage's
code version. A stage directory whose ``manifest.json`` exists holds a finished output (the manifest is
written last); anything else is redone. Re-running a finished job therefore does no model work, and a
crashed one redoes only what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.storage import is_remote, open_url, redact, url_to_fs

MANIFEST = "manifest.json"


def content_sha256(url: str, role: str = "input", chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, local or remote (streamed)."""
    from core.storage import storage_errors

    with storage_errors(url, role):
        fs, path = url_to_fs(str(url))
        if not fs.exists(path):
            raise InputError(f"{role} {redact(url)}: file not found")
        if fs.isdir(path):
            raise InputError(f"{role} {redact(url)}: is a directory, not a media file")
        h = hashlib.sha256()
        with fs.open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()


def stage_key(stage: str, version: str, **parts: Any) -> str:
    """Stable key of a stage run from JSON-able parts (inputs' keys/hashes, parameters, weights)."""
    blob = json.dumps({"stage": stage, "version": version, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WorkArea:
    root: str

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def stage_url(self, stage: str, key: str) -> str:
        if self.remote:
            return posixpath.join(self.root.rstrip("/"), stage, key)
        return str(Path(self.root).expanduser() / stage / key)

    def finished(self, stage: str, key: str) -> dict | None:
        """The manifest of a finished stage output, or None when it must be (re)computed."""
        url = f"{self.stage_url(stage, key)}/{MANIFEST}"
        try:
            with open_url(url, "r") as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None


def run_stage(work: WorkArea, stage: str, version: str, parts: dict,
              produce: Callable[[Path], dict], refresh: bool = False) -> dict:
    """Return the finished output of (stage, parts) from the work area, producing it if needed.

    ``produce(local_dir) -> dict`` writes files into ``local_dir`` and returns the manifest, naming
    its files by their local paths. For a remote work area the files are uploaded and those paths
    become URLs. The manifest gets ``key`` (for downstream keys), ``seconds`` and ``bytes``.
    """
    from core.progress import get_logger

    key = stage_key(stage, version, **parts)
    if not refresh:
        done = work.finished(stage, key)
        if done is not None:
            get_logger().info("%s: reusing finished output %s", stage, redact(work.stage_url(stage, key)))
            return {**done, "reused": True}
    url = work.stage_url(stage, key)
    start = time.perf_counter()

    def stamp(manifest: dict, size: int) -> dict:
        manifest.update(key=key, seconds=round(time.perf_counter() - start, 3), bytes=size,
                        worker=f"{socket.gethostname()}:{os.getpid()}")
        return manifest

    if work.remote:
        # no clearing: a concurrent run of the same key writes the same bytes (deterministic stages),
        # leftovers of an interrupted attempt are overwritten, and the manifest is written last
        with tempfile.TemporaryDirectory(prefix=f"wav2lip-hq-{stage}-") as tmp:
            manifest = stamp(_rebase(dict(produce(Path(tmp))), tmp, url), _tree_bytes(Path(tmp)))
            fs, path = url_to_fs(url)
            for local in sorted(Path(tmp).rglob("*")):
                if local.is_file():
                    fs.put_file(str(local), f"{path}/{local.relative_to(tmp).as_posix()}")
        _write_manifest(url, manifest)
        return {**manifest, "reused": False}

    final = Path(url)
    final.parent.mkdir(parents=True, exist_ok=True)
    # produce beside the final place, manifest included, then rename: the key's directory appears
    # complete or not at all, whatever a concurrent or interrupted attempt does
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        manifest = stamp(_rebase(dict(produce(tmp)), str(tmp), str(final)), _tree_bytes(tmp))
        _write_manifest(str(tmp), manifest)
        if final.exists() and work.finished(stage, key) is None:
            shutil.rmtree(final)  # an unfinished directory of an older layout
        try:
            os.rename(tmp, final)
        except OSError:
            done = work.finished(stage, key)
            if done is None:
                raise
            return {**done, "reused": True}  # a concurrent run finished first: same content
        return {**manifest, "reused": False}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tree_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _rebase(obj: Any, local_root: str, url: str) -> Any:
    """Replace local paths under ``local_root`` with the matching URLs, anywhere in a manifest."""
    if isinstance(obj, str) and obj.startswith(local_root):
        return url + obj[len(local_root):].replace(os.sep, "/")
    if isinstance(obj, dict):
        return {k: _rebase(v, local_root, url) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, local_root, url) for v in obj]
    return obj


def _write_manifest(url: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True)
    if is_remote(url):
        fs, path = url_to_fs(url)
        fs.pipe_file(f"{path}/{MANIFEST}", text.encode())  # one PUT: atomic
        return
    tmp = Path(url) / f".{MANIFEST}.part"
    tmp.write_text(text)
    os.replace(tmp, Path(url) / MANIFEST)
