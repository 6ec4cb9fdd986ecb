"""The one place stage tasks get their Prefect settings: content-keyed caching over the work area,
retries with backoff for transient failures and never for bad input."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from prefect import task

from core.errors import retry_unless_bad_input
from core.workarea import WorkArea, stage_key


def retry_delays() -> list[float]:
    """Backoff between attempts: ``WAV2LIP_HQ_RETRY_DELAYS`` (comma-separated seconds), default 2,10,30."""
    raw = os.environ.get("WAV2LIP_HQ_RETRY_DELAYS", "2,10,30")
    return [float(x) for x in raw.split(",") if x.strip()]


def stage_task(name: str, stage: str | None = None, version: str = "1",
               parts: Callable[..., dict] | None = None, retries: int = 2, **kwargs):
    """``@task`` for a pipeline stage.

    With ``parts`` (a function of the task's parameters giving the stage's key parts), Prefect's
    cache key is the stage's content key, offered only once the work area holds the finished
    output: a cached result never points at files that are gone. Results persist in the flow's
    result storage (a local directory by default; a storage block such as an s3 bucket in a cluster).
    """
    def cache_key(context, parameters: dict) -> str | None:
        if parts is None or parameters.get("refresh"):
            return None
        key = stage_key(stage, version, **parts(**parameters))
        if WorkArea(parameters["work_root"]).finished(stage, key) is None:
            return None
        # the result names files in this work area: a run on another work area (same content, same
        # key) must not be handed it, or it would point at files that may be gone
        area = hashlib.sha256(str(parameters["work_root"]).rstrip("/").encode()).hexdigest()[:16]
        return f"wav2lip-hq-{stage}-{key}-{area}"

    options = dict(name=name, retries=retries, retry_delay_seconds=retry_delays()[:max(1, retries)],
                   retry_jitter_factor=0.2, retry_condition_fn=retry_unless_bad_input)
    if parts is not None:
        options.update(cache_key_fn=cache_key, persist_result=True)
    else:
        from prefect.cache_policies import NO_CACHE

        options.update(cache_policy=NO_CACHE)
    return task(**options, **kwargs)
