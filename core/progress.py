"""Logging that goes to Prefect's run logger inside a run, and progress a person can follow."""
from __future__ import annotations

import logging
import time


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run, else the ``wav2lip_hq`` logger."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:
        pass
    return logging.getLogger("wav2lip_hq")


class Progress:
    """Logs ``label: done/total (pct), rate, eta`` every ``every`` percent, at least every ``interval``
    seconds (a long job is never silent for minutes), and at the end."""

    def __init__(self, label: str, total: int, unit: str = "frames", every: float = 10.0,
                 interval: float = 30.0) -> None:
        self.label, self.total, self.unit, self.every, self.interval = label, max(1, total), unit, every, interval
        self.done, self.start, self.next_pct = 0, time.monotonic(), every
        self.next_time = self.start + interval
        self.log = get_logger()

    def update(self, n: int = 1) -> None:
        self.done += n
        pct = 100.0 * self.done / self.total
        now = time.monotonic()
        if pct >= self.next_pct or self.done >= self.total or now >= self.next_time:
            self.next_time = now + self.interval
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            self.log.info("%s: %d/%d %s (%.0f%%), %.2f %s/s, about %.0f s left",
                          self.label, self.done, self.total, self.unit, pct, rate, self.unit, eta)
            while self.next_pct <= pct:
                self.next_pct += self.every
