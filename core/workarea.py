"""Content-keyed work area: every stage output lives under ``<root>/<stage>/<key>/`` with a manifest.

A stage's key hashes what determines its output: the content of its inputs (or the key of the
stage that made them), its parameters, the SHA-256 of the weights it uses, and the stage's code
version. A directory whose ``manifest.json`` exists holds a finished output; anything else is
redone. Re-running a finished job therefore does no model work, and a crashed one redoes only
what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from core.errors import InputError

MANIFEST = "manifest.json"


def content_sha256(url: str, role: str = "input", chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, local or remote (streamed)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    if not fs.exists(path):
        raise InputError(f"{role} {url}: file not found")
    if fs.isdir(path):
        raise InputError(f"{role} {url}: is a directory, not a media file")
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

    def stage_dir(self, stage: str, key: str) -> Path:
        return Path(self.root).expanduser() / stage / key

    def finished(self, stage: str, key: str) -> dict | None:
        """The manifest of a finished stage output, or None when it must be (re)computed."""
        path = self.stage_dir(stage, key) / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def begin(self, stage: str, key: str) -> Path:
        """A clean directory for a stage's output (leftovers of an interrupted attempt removed)."""
        d = self.stage_dir(stage, key)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def finish(self, stage: str, key: str, manifest: dict) -> dict:
        """Mark a stage output finished by writing its manifest last, atomically."""
        d = self.stage_dir(stage, key)
        tmp = d / f".{MANIFEST}.part"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, d / MANIFEST)
        return manifest


def run_stage(work: WorkArea, stage: str, version: str, parts: dict, produce) -> dict:
    """Return the finished output of (stage, parts) from the work area, producing it if needed.

    ``produce(out_dir) -> dict`` writes into ``out_dir`` and returns the manifest; the stage key is
    added to it as ``key`` so downstream stages can chain on it.
    """
    from core.progress import get_logger

    key = stage_key(stage, version, **parts)
    done = work.finished(stage, key)
    if done is not None:
        get_logger().info("%s: reusing finished output %s", stage, work.stage_dir(stage, key))
        return done
    out_dir = work.begin(stage, key)
    manifest = dict(produce(out_dir))
    manifest["key"] = key
    return work.finish(stage, key, manifest)
