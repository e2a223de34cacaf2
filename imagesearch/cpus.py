"""How many CPUs this process may really use: the cores it is allowed to run
on, further limited by a container's CPU quota (cgroup v2 ``cpu.max`` or
v1 ``cpu.cfs_quota_us``). ``os.cpu_count()`` reports the node's cores, which
in a container limited to 2 CPUs on a 64-core node means 64 threads. And
which instructions they have (``cpu_flags``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The instruction-set flags of this machine's CPU (empty where
    /proc/cpuinfo cannot be read): what the embedder's precision and the
    benchmarks' labels go by."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def quota_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs, or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = quota_cpus(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
