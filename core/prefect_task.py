"""The one place stage tasks get their Prefect settings: retries with backoff, never for bad input."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import retry_unless_bad_input

RETRY_DELAYS = [2, 10, 30]


def stage_task(name: str, retries: int = 2, **kwargs):
    """``@task`` for a pipeline stage. Caching is content-keyed in the work area (core.workarea),
    so Prefect's own input hashing is off: stage inputs are small manifests, outputs are files."""
    return task(name=name, retries=retries, retry_delay_seconds=RETRY_DELAYS[:max(1, retries)],
                retry_jitter_factor=0.2, retry_condition_fn=retry_unless_bad_input,
                cache_policy=NO_CACHE, **kwargs)
