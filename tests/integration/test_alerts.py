"""The alert rules on a real Prometheus: stop a classifier and its lag alert goes pending,
then firing.

Nothing of the shared stack is touched: a Prometheus of the test's own (scripts/prometheus.sh
with its own run directory, port and config) scrapes a fetcher and a classifier of the
test's own, on fresh topics and groups. The rules are deploy/k8s/base/monitoring/alerts.yaml
with every `for:` read in seconds instead of minutes (and an evaluation every second): the
expressions are the real ones, only the waiting is shorter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from services.common import pixels
from services.common.avro import IMAGES, nest_origin

from .processes import ROOT, free_port, fresh_topics, service, wait_until
from .test_classifier import image_record, photo_pixels

pytestmark = pytest.mark.integration

RULES = ROOT / "deploy" / "k8s" / "base" / "monitoring" / "alerts.yaml"
LAG_ALERT = "ConsumerLagGrowing"
DURATION = re.compile(r"^(\d+)([mh])$")
SHORTER_UNIT = {"m": "s", "h": "m"}


def minutes_as_seconds(duration: str) -> str:
    """`10m` → `10s`: a `for:` sixty times shorter (hours become minutes)."""
    match = DURATION.match(duration)
    assert match, f"unexpected duration {duration!r}"
    value, unit = match.groups()
    return f"{value}{SHORTER_UNIT[unit]}"


def rules_by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r.get("alert") or r["record"]: r for g in document["spec"]["groups"] for r in g["rules"]}


def fast_rules(out: Path) -> Path:
    """alerts.yaml with every `for:` sixty times shorter; the expressions untouched."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["spec"]["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = minutes_as_seconds(rule["for"])
    out.write_text(yaml.safe_dump(document, sort_keys=False, width=10_000))
    return out


def prometheus_config(out: Path, targets: dict[str, int]) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]} for job, port in targets.items()
        ],
    }
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


class OwnPrometheus:
    """scripts/prometheus.sh on a run directory, port, config and rules of the test's own."""

    def __init__(self, run_dir: Path, config: Path, rules: Path) -> None:
        self.port = free_port()
        self.run_dir = run_dir
        self.env = {
            **os.environ,
            "RUN_DIR": str(run_dir),
            "PROMETHEUS_PORT": str(self.port),
            "PROMETHEUS_CONFIG": str(config),
            "PROMETHEUS_RULES": str(rules),
        }

    def __enter__(self) -> OwnPrometheus:
        subprocess.run(["scripts/prometheus.sh", "start"], cwd=ROOT, env=self.env, check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["scripts/prometheus.sh", "stop"], cwd=ROOT, env=self.env, check=True)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return json.load(response)["data"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]

    def loaded_rules(self) -> dict[str, dict[str, Any]]:
        return {rule["name"]: rule for group in self.get("/api/v1/rules")["groups"] for rule in group["rules"]}


def committed(group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": "localhost:9092", "group.id": group})
    try:
        (position,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(position.offset)
    finally:
        consumer.close()


@pytest.fixture
def small_image() -> tuple[str, bytes]:
    """Pixels as a small JPEG: thousands of `images` records of them stay a few MB."""
    (raw,) = photo_pixels(1)
    return pixels.encode(raw, 224, "jpeg", quality=50)


@pytest.fixture
def writer() -> Iterator[tuple[Producer, threading.Event]]:
    producer = Producer({"bootstrap.servers": "localhost:9092", "linger.ms": 20})
    stop = threading.Event()
    yield producer, stop
    stop.set()
    producer.flush(30)


def write_images(producer: Producer, topic: str, image: tuple[str, bytes], first: int, count: int) -> None:
    pixel_format, data = image
    for i in range(first, first + count):
        record = {**image_record(str(i), data), "pixel_format": pixel_format}
        producer.produce(topic, IMAGES.encode(nest_origin(record)), key=str(i))
        producer.poll(0)


def test_lag_alert_goes_pending_then_firing_when_the_classifier_stops(
    kafka: None, triton: None, tmp_path: Path, small_image: tuple[str, bytes], writer: tuple[Producer, threading.Event]
) -> None:
    tweets, images, predictions = fresh_topics("tweets", "images", "predictions", partitions=1)
    group = f"test-classifier-{uuid.uuid4().hex[:8]}"
    fetcher_port, classifier_port = free_port(), free_port()
    config = prometheus_config(tmp_path / "prometheus.yml", {"fetcher": fetcher_port, "classifier": classifier_port})
    rules = fast_rules(tmp_path / "alerts.yaml")
    # The fetcher reads an empty topic of its own: it is here as the writer of `images` that
    # watches the classifier's group, the view that outlives a stopped classifier.
    fetcher_env = {
        "FETCHER_INPUT_TOPIC": tweets,
        "FETCHER_OUTPUT_TOPIC": images,
        "FETCHER_GROUP_ID": f"test-fetcher-{uuid.uuid4().hex[:8]}",
        "FETCHER_DOWNSTREAM_GROUP": group,
        "FETCHER_METRICS_PORT": str(fetcher_port),
    }
    classifier_env = {
        "CLASSIFIER_INPUT_TOPIC": images,
        "CLASSIFIER_OUTPUT_TOPIC": predictions,
        "CLASSIFIER_GROUP_ID": group,
        "CLASSIFIER_METRICS_PORT": str(classifier_port),
        "CLASSIFIER_MODEL_NAME": "noop",
    }
    producer, stop_writing = writer
    with (
        OwnPrometheus(tmp_path / "run", config, rules) as prometheus,
        service("fetcher", fetcher_env, tmp_path / "fetcher.log", fetcher_port),
        service("classifier", classifier_env, tmp_path / "classifier.log", classifier_port) as classifier,
    ):
        real, fast = (rules_by_name(yaml.safe_load(path.read_text())) for path in (RULES, rules))
        assert {name: rule["expr"] for name, rule in fast.items()} == {n: r["expr"] for n, r in real.items()}
        loaded = prometheus.loaded_rules()
        assert set(loaded) == set(real)
        assert real[LAG_ALERT]["for"] == "10m"
        assert loaded[LAG_ALERT]["duration"] == 10

        # The classifier reads and commits a few images: its group has a position to be behind of.
        write_images(producer, images, small_image, 0, 5)
        producer.flush(30)
        wait_until("the classifier commits its first images", lambda: committed(group, images) == 5, 60)
        wait_until(
            "Prometheus scrapes both",
            lambda: len(prometheus.get("/api/v1/query?query=up==1")["result"]) == 2,
            30,
        )
        assert not prometheus.alerts(LAG_ALERT)

        classifier.terminate()
        classifier.wait(30)

        def keep_writing() -> None:
            write_images(producer, images, small_image, 5, 1500)
            n = 1505
            while not stop_writing.wait(0.05):
                write_images(producer, images, small_image, n, 1)
                n += 1

        thread = threading.Thread(target=keep_writing, daemon=True)
        thread.start()
        states = watch_alert(prometheus, LAG_ALERT, {"topic": images}, until="firing", timeout_s=120)
        stop_writing.set()
        thread.join(30)

    assert states[0] == "pending", f"the lag alert fired without going pending first: {states}"
    assert states[-1] == "firing", states
    print(f"{LAG_ALERT} on {images}: {' → '.join(states)}")


def watch_alert(
    prometheus: OwnPrometheus, name: str, labels: dict[str, str], until: str, timeout_s: float
) -> list[str]:
    """The states the alert went through (deduplicated, in order) until it reaches `until`."""
    states: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for alert in prometheus.alerts(name):
            ours = all(alert["labels"].get(k) == v for k, v in labels.items())
            if ours and (not states or states[-1] != alert["state"]):
                states.append(alert["state"])
        if states and states[-1] == until:
            return states
        time.sleep(0.25)
    raise AssertionError(f"{name} {labels} not {until} after {timeout_s} s; states seen: {states}")
