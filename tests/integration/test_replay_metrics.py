"""A replay's counters reach the real local Prometheus: `python -m services.ingest replay` with the
flags `make replay` gives it serves its metrics, registers through the `registered` file-discovery
job, is scraped at zero before it sends and again after, and unregisters; the overview dashboard's
ingest panels then have data. Fresh topics; the stack's Prometheus (started if it is not running)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.ingest.scrape import FILE_PREFIX, JOB
from tests.unit.test_dashboards import all_queries, concrete

from .conftest import ROOT, _part
from .processes import free_port, fresh_topics
from .test_dashboards import PROMETHEUS, TARGETS_DIR, prom

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]

POSTS, WITHOUT_IMAGES = 6, 3
NOT_JSON, NOT_A_POST = 1, 1
WINDOW = "5m"


@pytest.fixture(scope="module")
def prometheus() -> Iterator[None]:
    yield from _part("scripts/prometheus.sh")


def stream(path: Path, id_base: int) -> Path:
    lines = []
    for i in range(POSTS + WITHOUT_IMAGES):
        tweet_id = str(id_base + i)
        has_image = i < POSTS
        payload: dict[str, Any] = {
            "data": {"id": tweet_id, "text": f"post {i}"},
            "includes": {},
            "matching_rules": [{"id": "1", "tag": "sample"}],
        }
        if has_image:
            payload["data"]["attachments"] = {"media_keys": [f"3_{i}"]}
            payload["includes"]["media"] = [{"media_key": f"3_{i}", "type": "photo", "url": f"https://img/{i}.jpg"}]
        lines.append(json.dumps(payload))
    lines += ["{not json"] * NOT_JSON + ['{"errors": "none", "no": "data"}'] * NOT_A_POST + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def replay(file: Path, *flags: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.ingest", "replay", str(file), *flags],
        cwd=ROOT,
        env={**os.environ, "X_BEARER_TOKEN": "", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def value(query: str) -> float | None:
    result = prom("/api/v1/query", query=query)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_a_replay_is_scraped_from_zero_to_its_final_counts(prometheus: None, tmp_path: Path) -> None:
    output, dlq = fresh_topics("tweets", "tweets.dlq")
    file = stream(tmp_path / "stream.jsonl", time.time_ns() // 1000 * 1000)

    done = replay(
        file,
        *("--metrics-port", "0", "--register", str(TARGETS_DIR), "--prometheus", PROMETHEUS, "--linger", "60"),
        env={"INGEST_OUTPUT_TOPIC": output, "INGEST_DLQ_TOPIC": dlq},
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["produced"] == POSTS
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (instance,) = {entry["instance"] for entry in logs if entry.get("msg") == "registered for scraping"}
    seen = [entry["msg"] for entry in logs if entry.get("msg", "").endswith("scrape seen")]
    assert seen == ["first scrape seen", "final scrape seen"], done.stderr
    registrations = TARGETS_DIR.glob(f"{FILE_PREFIX}*.json")
    assert all(instance not in p.read_text() for p in registrations), "unregistered at the end"

    mine = f'job="{JOB}", instance="{instance}", stage="ingest"'
    expected = {
        f'tagstream_records_produced_total{{{mine}, topic="{output}"}}': POSTS,
        f'tagstream_records_consumed_total{{{mine}, topic="replay"}}': POSTS + WITHOUT_IMAGES + NOT_JSON + NOT_A_POST,
        f'tagstream_records_skipped_total{{{mine}, reason="no_images"}}': WITHOUT_IMAGES,
        f'tagstream_dead_letters_total{{{mine}, reason="bad_json"}}': NOT_JSON,
        f'tagstream_dead_letters_total{{{mine}, reason="not_a_post"}}': NOT_A_POST,
        f'tagstream_dead_letters_total{{{mine}, reason="bad_post"}}': 0,
    }
    for series, count in expected.items():
        assert value(f"max_over_time({series}[{WINDOW}])") == count, series
        # scraped at zero before the replay sent anything: rate() and increase() see it all
        assert value(f"min_over_time({series}[{WINDOW}])") == 0, series
    produced = next(iter(expected))
    assert (value(f"rate({produced}[{WINDOW}])") or 0) > 0

    # The overview's ingest panels, empty during a replay before, have the replay's series.
    for _, panel, target in all_queries():
        if panel["title"] in ("Records skipped / s, by stage and reason", "Dead letters / s, by stage and reason"):
            result = prom("/api/v1/query", query=concrete(target["expr"], WINDOW))["result"]
            ingest = [s for s in result if s["metric"].get("stage") == "ingest" and float(s["value"][1]) > 0]
            assert ingest, f"{panel['title']}: no ingest series in {result}"


def test_a_prometheus_that_does_not_answer_is_not_waited_for(tmp_path: Path) -> None:
    output, dlq = fresh_topics("tweets", "tweets.dlq")
    file = stream(tmp_path / "stream.jsonl", time.time_ns() // 1000 * 1000)
    started = time.monotonic()
    nobody = f"http://127.0.0.1:{free_port()}"
    flags = ("--metrics-port", "0", "--register", str(tmp_path / "targets"), "--prometheus", nobody, "--linger", "120")
    done = replay(file, *flags, env={"INGEST_OUTPUT_TOPIC": output, "INGEST_DLQ_TOPIC": dlq})
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60, "it waited for a Prometheus that is not there"
    assert "Prometheus does not answer" in done.stderr
    assert list((tmp_path / "targets").iterdir()) == [], "its registration is removed"


def test_make_replay_has_the_replay_scraped() -> None:
    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed-stack", "replay", "FILE=x.jsonl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert "--metrics-port 0 --register .run/prometheus/targets --prometheus http://127.0.0.1:9090" in command
