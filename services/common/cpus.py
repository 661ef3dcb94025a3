"""How many CPUs this process may really use: what sizes the decode pools.

`os.cpu_count()` is the node's count; in a container limited to one core of a 64-core node,
64 decode threads would only contend. The limit is the smallest of: the CPUs the process may
be scheduled on (its affinity), and the cgroup's CPU quota (cgroup v2 `cpu.max`, or v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up to a whole CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs, or None when it sets none (or there is no cgroup)."""
    v2 = cgroup_root / "cpu.max"
    v1_quota, v1_period = cgroup_root / "cpu" / "cpu.cfs_quota_us", cgroup_root / "cpu" / "cpu.cfs_period_us"
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text())
            return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError):  # unreadable or malformed: no limit we can tell
        return None
    return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process can keep busy: at least 1."""
    try:
        schedulable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        schedulable = os.cpu_count() or 1
    quota = quota_cpus(cgroup_root)
    if quota is not None:
        schedulable = min(schedulable, math.ceil(quota))
    return max(1, schedulable)
