"""How much of the machine a measurement had: our CPU time and the cores other users kept busy.

The benchmark machine is shared (2 cores, other people's test runs). Wall-time ratios are only
meaningful when the others were quiet, so every measurement reports what they used.
"""
from __future__ import annotations

import os
import time

import psutil


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _our_cpu() -> float:
    """CPU seconds of this process and all its descendants, live or already reaped."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class CpuShare:
    """``with CpuShare() as c: ...`` then ``c.wall``, ``c.ours`` (CPU s), ``c.others`` (cores busy)."""

    def __enter__(self) -> CpuShare:
        self._t, self._m, self._o = time.perf_counter(), _machine_busy(), _our_cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t
        self.ours = _our_cpu() - self._o
        busy = _machine_busy() - self._m
        self.others = max(0.0, (busy - self.ours) / self.wall) if self.wall > 0 else 0.0

    def as_dict(self) -> dict:
        return {"wall": self.wall, "cpu": self.ours, "others_cores": self.others}
