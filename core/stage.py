"""A pipeline stage: its name, code version, product type and key inputs, declared once.

The work area is the only cache. A stage's key hashes what its output depends on
(``key_inputs``); its finished output lives under ``<work>/<name>/<key>/`` with the product as JSON in
``manifest.json``, written last. Prefect's own result cache and persistence are off for stage tasks:
a re-run calls the task, which finds the manifest and returns at once, so there is nothing to drift
apart and nothing pickled to a shared store.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import ValidationError

from core.errors import retry_unless_bad_input
from core.products import Product
from core.progress import get_logger
from core.storage import redact, url_to_fs
from core.workarea import WorkArea, rebase, stage_key, tree_bytes, write_manifest

P = TypeVar("P", bound=Product)


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_abandoned(folder: Path, key: str) -> None:
    """Remove the temporary directories of ``key`` (``*``: any) left by killed runs of this host (their
    process is gone); those of live runs, and of other hosts sharing the folder, are left alone."""
    host = socket.gethostname()
    for tmp in folder.glob(f".{key}.{host}-*.*"):
        pid = tmp.name.split(f".{host}-", 1)[1].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_delays() -> list[float]:
    """Backoff between attempts: ``WAV2LIP_HQ_RETRY_DELAYS`` (comma-separated seconds), default 2,10,30."""
    raw = os.environ.get("WAV2LIP_HQ_RETRY_DELAYS", "2,10,30")
    return [float(x) for x in raw.split(",") if x.strip()]


def pipeline_task(name: str, retries: int = 2, **kwargs):
    """``@task`` with the pipeline's settings: retries with backoff for transient failures and never
    for bad input; no Prefect cache or result persistence (the work area is the cache)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name=name, retries=retries, retry_delay_seconds=retry_delays()[:max(1, retries)],
                retry_jitter_factor=0.2, retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE,
                persist_result=False, **kwargs)


@dataclass(frozen=True)
class Stage(Generic[P]):
    name: str                              # the task's name, its work-area folder, its stage-table row
    version: str                           # bump when the code changes its output
    product: type[P]
    key_inputs: Callable[..., dict]        # the stage's inputs -> what its output depends on

    def key(self, **inputs) -> str:
        return stage_key(self.name, self.version, **self.key_inputs(**inputs))

    def task(self, fn=None, **kwargs):
        """Decorate the stage's task function (see :func:`pipeline_task`)."""
        if fn is None:
            return lambda f: pipeline_task(self.name, **kwargs)(f)
        return pipeline_task(self.name, **kwargs)(fn)

    def finished(self, work_root: str, **inputs) -> P | None:
        """The finished product in the work area, or None when it must be (re)computed."""
        return self._read(WorkArea(work_root), self.key(**inputs))

    def _read(self, work: WorkArea, key: str) -> P | None:
        text = work.manifest(self.name, key)
        if text is None:
            return None
        try:
            return self.product.model_validate_json(text)
        except ValidationError:
            # not what this stage writes (an older layout, or tampered with): never trusted, redone
            get_logger().warning("%s: ignoring an unreadable manifest at %s", self.name,
                                 redact(work.stage_url(self.name, key)))
            return None

    def run(self, work_root: str, produce: Callable[[Path], P], refresh: bool = False, **inputs) -> P:
        """The finished product for ``inputs``: from the work area, or made by ``produce(local_dir)``.

        ``produce`` writes its files into ``local_dir`` and returns the product naming them by their
        local paths; for a remote work area the files are uploaded and those paths become URLs.
        """
        work = WorkArea(work_root)
        key = self.key(**inputs)
        if not refresh:
            done = self._read(work, key)
            if done is not None:
                get_logger().info("%s: reusing finished output %s", self.name,
                                  redact(work.stage_url(self.name, key)))
                return done.model_copy(update={"reused": True})
        url = work.stage_url(self.name, key)
        started, start = time.time(), time.perf_counter()

        def finish(product: P, local_root: Path, final_url: str) -> P:
            data = rebase(product.model_dump(), str(local_root), final_url)
            data.update(key=key, started=started, seconds=round(time.perf_counter() - start, 3),
                        bytes=tree_bytes(local_root),
                        worker=f"{socket.gethostname()}:{os.getpid()}", reused=False)
            return self.product.model_validate(data)

        if work.remote:
            # no clearing: a concurrent run of the same key writes the same bytes (deterministic stages),
            # leftovers of an interrupted attempt are overwritten, and the manifest is written last
            with tempfile.TemporaryDirectory(prefix=f"wav2lip-hq-{self.name}-") as tmp:
                done = finish(produce(Path(tmp)), Path(tmp), url)
                fs, path = url_to_fs(url)
                for local in sorted(Path(tmp).rglob("*")):
                    if local.is_file():
                        fs.put_file(str(local), f"{path}/{local.relative_to(tmp).as_posix()}")
            write_manifest(url, done.model_dump_json(indent=1))
            return done

        final = Path(url)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(final.parent, key)
        # produce beside the final place, manifest included, then rename: the key's directory appears
        # complete or not at all, whatever a concurrent or interrupted attempt does
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.{_owner()}.", dir=final.parent))
        try:
            done = finish(produce(tmp), tmp, str(final))
            write_manifest(str(tmp), done.model_dump_json(indent=1))
            if final.exists() and self._read(work, key) is None:
                shutil.rmtree(final)  # an unfinished directory of an older layout
            try:
                os.rename(tmp, final)
            except OSError:
                other = self._read(work, key)
                if other is None:
                    raise
                return other.model_copy(update={"reused": True})  # a concurrent run finished first
            return done
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


