"""Every panel query of every dashboard in deploy/grafana/, sent to the stack's real Prometheus
while a replayed stream goes through the pipeline, returns data; every metric a dashboard names
is exported by a target Prometheus scrapes.

The replay runs through an ingest service of the test's own (INGEST_REPLAY_FILE, a free
metrics port) that registers with Prometheus through the `registered` file-discovery job, so
ingest's counters are scraped too (`python -m services.ingest replay` exits before a scrape).
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_dashboards import all_queries, concrete, metric_names, needs_gpu
from tools import demo_data

from .conftest import ROOT
from .processes import free_port, service, wait_until

pytestmark = pytest.mark.integration

PROMETHEUS = "http://127.0.0.1:9090"
# The `registered` job of deploy/prometheus/prometheus.yml, under the stack's RUN_DIR.
TARGETS_DIR = ROOT / os.environ.get("RUN_DIR", ".run") / "prometheus" / "targets"
IMAGE_SERVER = "http://127.0.0.1:8765"
SCRAPE_INTERVAL_S = 5.0  # deploy/prometheus/prometheus.yml
# In place of Grafana's $__rate_interval: long enough to hold the whole replay, short enough
# that a rate or a quantile is about this run.
WINDOW = "2m"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
FRESH_S = 15  # three scrape intervals (deploy/prometheus/prometheus.yml)
REPLAY_RATE = 1.0  # posts per second: the sample stream's posts take about 20 s


def prom(path: str, **params: str) -> Any:
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=15) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def scalar(query: str) -> float:
    """The value of a one-series query; 0 when it has no series yet."""
    result = prom("/api/v1/query", query=query)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else 0.0


def live_sum(series: str) -> str:
    """A query for the sum of `series` over the samples scraped in the last FRESH_S seconds.

    Prometheus marks nothing stale for the time it was down: right after a restart its TSDB
    still answers, for five minutes, with the last sample of a process that is gone (a counter
    the new process starts again from 0) until the new process exports the same series.
    """
    return f"sum({series} unless (time() - timestamp({series}) > {FRESH_S}))"


@pytest.fixture(scope="module")
def prometheus(stack: None) -> str:
    """The stack's Prometheus (scripts/stack.sh up starts it), ready."""
    wait_until("Prometheus ready", _ready, 60, every_s=1)
    return PROMETHEUS


def _ready() -> bool:
    try:
        with urllib.request.urlopen(f"{PROMETHEUS}/-/ready", timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def registered(port: int) -> Iterator[str]:
    """Have Prometheus scrape 127.0.0.1:`port` while the block runs; yields the instance label."""
    instance = f"127.0.0.1:{port}"
    TARGETS_DIR.mkdir(parents=True, exist_ok=True)
    path = TARGETS_DIR / f"test-dashboards-{os.getpid()}-{port}.json"
    path.write_text(json.dumps([{"targets": [instance], "labels": {"origin": "test_dashboards"}}]))
    try:
        yield instance
    finally:
        path.unlink(missing_ok=True)


def target_up(instance: str) -> bool:
    active = prom("/api/v1/targets", state="active")["activeTargets"]
    return any(t["labels"]["instance"] == instance and t["health"] == "up" for t in active)


def exported_metric_names() -> set[str]:
    """Names with samples in the last minutes, and names the targets declare (# TYPE lines):
    prometheus_client declares a labelled counter before its first increment."""
    now = time.time()
    names = set(prom("/api/v1/label/__name__/values", start=str(now - 300), end=str(now)))
    for entry in prom("/api/v1/targets/metadata"):
        name = entry["metric"]
        names.add(name)
        if entry["type"] == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def test_every_panel_query_returns_data_during_a_replay(prometheus: str, tmp_path: Path) -> None:
    id_base = time.time_ns() // 1000 * 1000
    stream = tmp_path / "stream.jsonl"
    demo_data.write_stream(stream, IMAGE_SERVER, id_base, url_suffix=f"?run={id_base}")  # new to the fetch cache
    payloads = [json.loads(line) for line in stream.read_text().splitlines() if line.strip().endswith("}")]
    with_media = [p for p in payloads if p["includes"].get("media")]
    urls = [m.get("url") or m.get("preview_image_url") for p in with_media for m in p["includes"]["media"]]
    good_images = sum(1 for url in urls if "/photo-" in url)
    assert 0 < good_images < len(urls)  # broken images too: the fetcher's dead letters

    classified = live_sum('tagstream_records_produced_total{stage="classifier"}')
    stored = live_sum('tagstream_records_consumed_total{stage="sink"}')
    classified_before, stored_before = scalar(classified), scalar(stored)

    port = free_port()
    # Paced over several scrape intervals, as a live stream would be: a labelled series is born
    # with its first increment, and rate() sees only what comes after the first scrape of it.
    env = {
        "INGEST_REPLAY_FILE": str(stream),
        "INGEST_REPLAY_RATE": str(REPLAY_RATE),
        "INGEST_METRICS_PORT": str(port),
        "X_BEARER_TOKEN": "",
    }
    with registered(port) as instance, service("ingest", env, tmp_path / "ingest.log", port):
        wait_until(f"Prometheus scraping {instance}", lambda: target_up(instance), 60, every_s=1)
        ingested = f'sum(tagstream_records_produced_total{{stage="ingest", instance="{instance}"}})'
        wait_until("ingest's replay in Prometheus", lambda: scalar(ingested) == len(with_media), 120, every_s=1)
        wait_until(
            "the classifier's predictions",
            lambda: scalar(classified) - classified_before >= good_images,
            300,
            every_s=1,
        )
        wait_until("the sink's records", lambda: scalar(stored) - stored_before >= good_images, 120, every_s=1)
        time.sleep(2 * SCRAPE_INTERVAL_S)  # every target scraped again since the last record

        empty: list[str] = []
        used: set[str] = set()
        for dashboard, panel, target in all_queries():
            if needs_gpu(panel):
                continue  # nv_gpu_* exist only on a GPU server (the unit tests limit the marker to those)
            where = f"{dashboard}: {panel['title']!r} {target['refId']}"
            used |= metric_names(target["expr"])
            result = prom("/api/v1/query", query=concrete(target["expr"], WINDOW))["result"]
            if not any(math.isfinite(float(series["value"][1])) for series in result):
                empty.append(f"{where}: {'only NaN' if result else 'no series'}")
        exported = exported_metric_names()

    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert used <= exported, f"named by a dashboard, exported by no target: {sorted(used - exported)}"
