"""The pure parts of a one-off run's scraping (services/ingest/scrape.py); the run itself on the
real local Prometheus is tests/integration/test_replay_metrics.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.ingest.scrape import JOB, scraped_since, stale_registrations, target_groups

SINCE = datetime(2026, 12, 1, 12, 0, 0, 500_000, tzinfo=UTC)
ME = "127.0.0.1:9200"


def targets(*entries: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "activeTargets": [
                {"labels": {"instance": instance, "job": JOB}, "health": health, "lastScrape": last}
                for instance, health, last in entries
            ]
        },
    }


def test_the_registration_is_file_discovery_json_with_a_job_of_its_own() -> None:
    groups = target_groups(ME)
    assert json.loads(json.dumps(groups)) == [{"targets": [ME], "labels": {"job": "ingest-replay"}}]
    assert JOB not in ("ingest", "fetcher", "classifier", "sink"), "a stage-down alert would count it"


@pytest.mark.parametrize(
    ("entries", "seen"),
    [
        ([(ME, "up", "2026-12-01T12:00:00.600000001Z")], True),
        ([(ME, "up", "2026-12-01T12:00:00.400000000Z")], False),  # before: the counts it holds are older
        ([(ME, "down", "2026-12-01T12:00:01Z")], False),
        ([(ME, "unknown", "0001-01-01T00:00:00Z")], False),  # discovered, never scraped yet
        ([("127.0.0.1:9101", "up", "2026-12-01T12:00:01Z")], False),
        ([(ME, "up", "not a time")], False),
        ([], False),
    ],
)
def test_a_scrape_counts_only_if_it_is_ours_successful_and_after(
    entries: list[tuple[str, str, str]], seen: bool
) -> None:
    assert scraped_since(targets(*entries), ME, SINCE) is seen


def test_an_unexpected_answer_is_no_scrape() -> None:
    assert scraped_since({"status": "error"}, ME, SINCE) is False


def test_registrations_of_runs_that_are_gone_are_stale(tmp_path: Path) -> None:
    for name in ("ingest-replay-100.json", "ingest-replay-200.json", "ingest-replay-x.json", "other-100.json"):
        (tmp_path / name).write_text("[]")
    stale = stale_registrations(tmp_path, alive=lambda pid: pid == 200)
    assert [p.name for p in stale] == ["ingest-replay-100.json"]
