"""The CPU count the decode pools are sized by: affinity, then the tightest cgroup quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.cpus import available_cpus, quota_cpus


def _proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def _v2(root: Path, cgroup: str, cpu_max: str) -> Path:
    directory = root / cgroup.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.max").write_text(cpu_max)
    return root


def _v1(root: Path, cgroup: str, quota: str, period: str) -> Path:
    directory = root / "cpu" / cgroup.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(quota)
    (directory / "cpu.cfs_period_us").write_text(period)
    return root


@pytest.fixture
def eight_cpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight schedulable CPUs, whatever machine runs the tests."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)


def test_v2_quota_of_the_containers_own_namespace_is_read_in_cpus(tmp_path: Path) -> None:
    root = _v2(tmp_path / "fs", "/", "150000 100000\n")
    assert quota_cpus(root, _proc(tmp_path, "0::/\n")) == 1.5


def test_v2_without_a_limit_says_none(tmp_path: Path) -> None:
    root = _v2(tmp_path / "fs", "/", "max 100000\n")
    assert quota_cpus(root, _proc(tmp_path, "0::/\n")) is None


def test_v2_the_tightest_quota_up_the_tree_wins(tmp_path: Path) -> None:
    """On a host the process sits deep in the hierarchy; a parent's quota binds it too."""
    root = _v2(tmp_path / "fs", "/kubepods/pod1", "200000 100000\n")
    _v2(root, "/kubepods/pod1/c1", "max 100000\n")
    _v2(root, "/", "max 100000\n")
    assert quota_cpus(root, _proc(tmp_path, "0::/kubepods/pod1/c1\n")) == 2.0


def test_v1_cpu_controller_quota_is_read_and_minus_one_means_none(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "5:memory:/x\n3:cpu,cpuacct:/x\n")
    assert quota_cpus(_v1(tmp_path / "a", "/x", "50000", "100000"), proc) == 0.5
    assert quota_cpus(_v1(tmp_path / "b", "/x", "-1", "100000"), proc) is None


@pytest.mark.parametrize("cpu_max", ["lots\n", "100000 0\n", ""])
def test_no_cgroup_or_a_malformed_one_means_no_limit(tmp_path: Path, cpu_max: str) -> None:
    assert quota_cpus(tmp_path / "nothing", tmp_path / "no-proc-file") is None
    assert quota_cpus(_v2(tmp_path / "fs", "/", cpu_max), _proc(tmp_path, "0::/\n")) is None


def test_a_quota_without_a_period_uses_the_kernel_default(tmp_path: Path) -> None:
    assert quota_cpus(_v2(tmp_path / "fs", "/", "250000"), _proc(tmp_path, "0::/\n")) == 2.5


@pytest.mark.usefixtures("eight_cpu_node")
@pytest.mark.parametrize(("cpu_max", "expected"), [("50000 100000", 1), ("100000 100000", 1), ("150000 100000", 2)])
def test_a_quota_below_the_schedulable_cpus_rounds_up_to_whole_cpus(
    tmp_path: Path, cpu_max: str, expected: int
) -> None:
    assert available_cpus(_v2(tmp_path / "fs", "/", cpu_max), _proc(tmp_path, "0::/\n")) == expected


def test_affinity_bounds_a_larger_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    proc = _proc(tmp_path, "0::/\n")
    assert available_cpus(_v2(tmp_path / "a", "/", "800000 100000"), proc) == 2
    assert available_cpus(_v2(tmp_path / "b", "/", "max 100000"), proc) == 2


def test_without_affinity_the_cpu_count_is_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    proc = _proc(tmp_path, "0::/\n")
    assert available_cpus(tmp_path / "nothing", proc) == 4
    assert available_cpus(_v2(tmp_path / "fs", "/", "100000 100000"), proc) == 1
