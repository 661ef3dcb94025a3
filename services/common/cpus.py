"""How many CPUs this process may really use: what sizes the decode pools.

`os.cpu_count()` is the node's count; in a container limited to one core of a 64-core node,
64 decode threads would only contend. The limit is the smallest of: the CPUs the process may
be scheduled on (its affinity), and the CPU quota of its cgroup and of every cgroup above it
(cgroup v2 `cpu.max`; v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up to a whole CPU.
The process's cgroup comes from `/proc/self/cgroup`; inside a container with its own cgroup
namespace that is the mount's root.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def quota_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in CPUs; None when
    none sets one (or there is no cgroup to read)."""
    quotas = [q for q in (_quota(d) for d in _cgroup_dirs(cgroup_root, proc_cgroup)) if q is not None]
    return min(quotas, default=None)


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Whole CPUs this process can keep busy: at least 1."""
    try:
        schedulable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        schedulable = os.cpu_count() or 1
    quota = quota_cpus(cgroup_root, proc_cgroup)
    if quota is not None:
        schedulable = min(schedulable, math.ceil(quota))
    return max(1, schedulable)


def _cgroup_dirs(cgroup_root: Path, proc_cgroup: Path) -> Iterator[Path]:
    """The directories of this process's CPU cgroup, from its own up to each mount's root."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for mount in (cgroup_root, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
        own = mount / _cgroup_path(lines, v2=mount == cgroup_root).lstrip("/")
        if own != mount and mount not in own.parents:
            continue
        for directory in (own, *own.parents):
            if directory.is_dir():
                yield directory
            if directory == mount:
                break


def _cgroup_path(lines: list[str], v2: bool) -> str:
    """This process's cgroup path (lines of /proc/self/cgroup), for the v2 hierarchy or the v1
    `cpu` controller; "" if unknown."""
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return path
    return ""


def _quota(directory: Path) -> float | None:
    v2 = directory / "cpu.max"
    v1_quota, v1_period = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or "100000")
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text())
            return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError, ZeroDivisionError):  # unreadable or malformed: no limit we can tell
        return None
    return None
