"""Content-keyed work area: every stage output lives under ``<root>/<stage>/<key>/`` with a manifest
(the stage's typed product as JSON; see core/stage.py).

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


def default_work_root() -> str:
    """``WAV2LIP_HQ_WORK_DIR`` or ``<user cache>/wav2lip-hq/work``."""
    env = os.environ.get("WAV2LIP_HQ_WORK_DIR")
    if env:
        return env
    from platformdirs import user_cache_dir

    return os.path.join(user_cache_dir("wav2lip-hq"), "work")


def check_work_area(root: str) -> None:
    """Fail early when the work area cannot hold stage outputs: a file, unwritable, a missing bucket."""
    from core.storage import check_bucket, not_writable

    if is_remote(root):
        check_bucket(root, "work_dir")
        return
    path = Path(root).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"work_dir {root}: is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())  # nothing is created before the run
    if not existing.is_dir():
        raise InputError(f"work_dir {root}: {existing} is a file, not a folder")
    if (why := not_writable(existing)) is not None:
        raise InputError(f"work_dir {root}: cannot write in {existing} ({why})")


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

    def manifest(self, stage: str, key: str) -> bytes | None:
        """The manifest of a finished stage output, or None when there is none."""
        url = f"{self.stage_url(stage, key)}/{MANIFEST}"
        try:
            with open_url(url, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


def tree_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def rebase(obj: Any, local_root: str, url: str) -> Any:
    """Replace local paths under ``local_root`` with the matching URLs, anywhere in a manifest."""
    if isinstance(obj, str) and obj.startswith(local_root):
        return url + obj[len(local_root):].replace(os.sep, "/")
    if isinstance(obj, dict):
        return {k: rebase(v, local_root, url) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rebase(v, local_root, url) for v in obj]
    return obj


def write_manifest(url: str, text: str) -> None:
    """Write a stage directory's manifest last, in one step (its presence marks the output finished)."""
    if is_remote(url):
        fs, path = url_to_fs(url)
        fs.pipe_file(f"{path}/{MANIFEST}", text.encode())  # one PUT: atomic
        return
    tmp = Path(url) / f".{MANIFEST}.part"
    tmp.write_text(text)
    os.replace(tmp, Path(url) / MANIFEST)
