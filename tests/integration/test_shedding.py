"""Shedding on a real broker: an overloaded classifier drops low priorities first, counts and
commits what it drops, and keeps every high-priority record."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from services.common.avro import PREDICTIONS
from services.common.kafka import TopicSpec, ensure_topics
from services.common.settings import KafkaSettings

from .processes import free_port, service
from .test_classifier import image_record, photo_pixels, produce

pytestmark = pytest.mark.integration

HIGH, LOW = 2, 1


def read_all(topic: str, until: float) -> list[tuple[str, dict[str, str]]]:
    """(key, headers) of every record on `topic` seen before `until` (monotonic)."""
    consumer = Consumer(
        {"bootstrap.servers": "localhost:9092", "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen = []
    try:
        while time.monotonic() < until:
            message = consumer.poll(0.3)
            if message is None:
                continue
            if not message.error():
                headers = {
                    str(h[0]): h[1].decode() if isinstance(h[1], bytes) else str(h[1]) for h in message.headers() or []
                }
                seen.append(((message.key() or b"").decode(), headers))
    finally:
        consumer.close()
    return seen


def committed_offsets(group: str, topic: str, until: float, expected: int) -> int:
    """The group's committed offsets summed over the topic's partitions, once they reach `expected`
    (the background commit runs every second) or when time runs out."""
    consumer = Consumer({"bootstrap.servers": "localhost:9092", "group.id": group})
    try:
        while True:
            total = sum(
                max(tp.offset, 0) for tp in consumer.committed([TopicPartition(topic, p) for p in range(3)], 10)
            )
            if total >= expected or time.monotonic() > until:
                return total
            time.sleep(0.5)
    finally:
        consumer.close()


def metric(port: int, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name}{{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_overload_sheds_low_priority_first_and_keeps_every_high_one(kafka: None, triton: None, tmp_path: Path) -> None:
    source = f"test-images-{uuid.uuid4().hex[:8]}"
    predictions = f"test-predictions-{uuid.uuid4().hex[:8]}"
    ensure_topics(
        KafkaSettings(),
        [
            TopicSpec(source, 3),
            TopicSpec(source + ".shed", 1),
            TopicSpec(source + ".dlq", 1),
            TopicSpec(predictions, 3),
        ],
    )
    pixels = photo_pixels(1)[0]
    records = [image_record(str(30_000 + i), pixels) for i in range(200)]
    for i, record in enumerate(records):
        record["priority"] = HIGH if i % 5 == 0 else LOW
    high = {r["tweet_id"] for r in records if r["priority"] == HIGH}
    produce(source, records)  # the whole backlog is there before the classifier starts

    port = free_port()
    group = f"test-classifier-{uuid.uuid4().hex[:8]}"
    env = {
        "CLASSIFIER_INPUT_TOPIC": source,
        "CLASSIFIER_OUTPUT_TOPIC": predictions,
        "CLASSIFIER_GROUP_ID": group,
        "CLASSIFIER_METRICS_PORT": str(port),
        "CLASSIFIER_MAX_BATCH_SIZE": "4",
        "CLASSIFIER_MAX_REQUESTS_IN_FLIGHT": "1",
        "CLASSIFIER_MAX_IN_FLIGHT": "12",
        "CLASSIFIER_CONSUME_BATCH_SIZE": "6",
        # keep only high priority while 60 or more records are waiting; leave under 30 for 1 s
        "CLASSIFIER_SHED_LEVELS": json.dumps([{"min_priority": HIGH, "lag_records": 60, "lag_seconds": 3600}]),
        "CLASSIFIER_SHED_EXIT_RATIO": "0.5",
        "CLASSIFIER_SHED_MIN_DWELL_S": "1",
    }
    with service("classifier", env, tmp_path / "classifier.log", port):
        consumer = Consumer(
            {"bootstrap.servers": "localhost:9092", "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
        )
        consumer.subscribe([predictions])
        classified: set[str] = set()

        def settled(total: int) -> float:
            """Poll predictions until classified + shed reach `total`; return the shed count."""
            deadline = time.monotonic() + 240
            shed = 0.0
            while time.monotonic() < deadline and len(classified) + shed < total:
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    classified.add(PREDICTIONS.decode(message.value())["tweet_id"])
                shed = metric(port, "tagstream_records_shed_total", f'priority="{LOW}"')
            return shed

        shed_count = settled(len(records))
        # The backlog is gone: after the level's dwell time, low priority is processed again.
        time.sleep(3)
        later = [image_record(str(40_000 + i), pixels) for i in range(10)]
        for record in later:
            record["priority"] = LOW
        produce(source, later)
        assert settled(len(records) + len(later)) == shed_count, "nothing is shed without a backlog"
        consumer.close()
        assert metric(port, "tagstream_records_shed_total", f'priority="{HIGH}"') == 0
        committed = committed_offsets(group, source, until=time.monotonic() + 60, expected=len(records) + len(later))

    audit = read_all(source + ".shed", until=time.monotonic() + 5)
    shed = {key for key, _ in audit}
    assert high <= classified, "every high-priority record is classified"
    assert shed, "the overload made the classifier shed"
    assert all(headers["priority"] == str(LOW) and headers["reason"] == "shed" for _, headers in audit)
    assert not shed & classified, "a record is either shed or classified"
    assert shed | classified == {r["tweet_id"] for r in records + later}, "nothing is lost silently"
    assert shed_count == len(shed), "every drop is counted"
    assert {r["tweet_id"] for r in later} <= classified, "low priority is classified again once the lag is gone"

    assert committed == len(records) + len(later), "shed records are committed too"
