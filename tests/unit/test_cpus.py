"""The CPU count the decode pools are sized by: affinity, then the cgroup's quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.cpus import available_cpus, quota_cpus


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


def test_v2_quota_is_read_in_cpus(tmp_path: Path) -> None:
    assert quota_cpus(_v2(tmp_path, "150000 100000\n")) == 1.5


def test_v2_without_a_limit_says_none(tmp_path: Path) -> None:
    assert quota_cpus(_v2(tmp_path, "max 100000\n")) is None


def test_v1_quota_is_read_and_minus_one_means_none(tmp_path: Path) -> None:
    assert quota_cpus(_v1(tmp_path / "a", "50000", "100000")) == 0.5
    assert quota_cpus(_v1(tmp_path / "b", "-1", "100000")) is None


def test_no_cgroup_files_and_malformed_files_mean_no_limit(tmp_path: Path) -> None:
    assert quota_cpus(tmp_path) is None
    assert quota_cpus(_v2(tmp_path, "lots\n")) is None


@pytest.mark.parametrize(("quota", "expected"), [("50000 100000", 1), ("100000 100000", 1), ("150000 100000", 2)])
def test_a_quota_below_the_schedulable_cpus_rounds_up_to_whole_cpus(
    tmp_path: Path, quota: str, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert available_cpus(_v2(tmp_path, quota)) == expected


def test_affinity_bounds_a_larger_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert available_cpus(_v2(tmp_path, "800000 100000")) == 2
    assert available_cpus(_v2(tmp_path, "max 100000")) == 2
