"""Shedding on a real broker: an overloaded classifier drops low priorities first, counts and
commits what it drops, and keeps every high-priority record."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from services.common.avro import IMAGES, PREDICTIONS, TWEETS
from services.common.downstream import DownstreamWatch
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.shedding import Lag
from services.common.stages import TopicSpec

from .processes import free_port, fresh_topics, service, wait_until
from .test_classifier import consume, image_record, photo_pixels, produce
from .test_gallery import ImageServer

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


def high_watermarks(topic: str, partitions: int = 3) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": "localhost:9092", "group.id": f"test-{uuid.uuid4()}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
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
                    classified.add(PREDICTIONS.decode(message.value())["origin"]["tweet_id"])
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


def tweet_record(n: int, url: str, priority: int) -> dict[str, Any]:
    return {
        "tweet_id": str(n), "text": "a post", "author_id": None, "author_username": None, "created_at": None,
        "lang": None, "post_url": f"https://x.com/i/web/status/{n}",
        "media": [{"media_key": f"3_{n}", "type": "photo", "url": url, "width": None, "height": None}],
        "matching_rules": [], "priority": priority, "ingest_ts_ms": int(time.time() * 1000),
    }  # fmt: skip


def commit(group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` for `group` as an outside client (the group has no member)."""
    consumer = Consumer({"bootstrap.servers": "localhost:9092", "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def test_the_watch_reads_a_groups_lag_from_its_commits_and_the_watermarks(kafka: None) -> None:
    (topic,) = fresh_topics("downstream", partitions=1)
    group = f"test-next-{uuid.uuid4().hex[:8]}"
    pixels = photo_pixels(1)[0]
    watch = DownstreamWatch(KafkaSettings(), "test", topic, group, stale_after_s=2.0, grace_s=0.0)

    async def scenario() -> list[Lag]:
        produce(topic, [image_record(str(i), pixels) for i in range(10)])
        seen = [await watch.poll_once()]  # the group has committed nothing: not counted
        commit(group, topic, {0: 4})
        await asyncio.sleep(1.5)
        produce(topic, [image_record(str(i), pixels) for i in range(10, 20)])
        seen += [await watch.poll_once(), watch.lag()]
        await asyncio.sleep(2.5)
        seen.append(watch.lag())  # not renewed for longer than stale_after_s
        commit(group, topic, {0: 20})
        seen.append(await watch.poll_once())
        return seen

    never, behind, current, stale, caught_up = asyncio.run(scenario())
    assert never == Lag(0, 0.0)
    assert behind.records == 16
    assert 1.5 <= behind.seconds < 30, "offset 4 was written before the first look, 1.5 s or more ago"
    assert current == behind
    assert stale == Lag(0, 0.0), "a figure that could not be renewed is not kept for ever"
    assert caught_up == Lag(0, 0.0)


def test_a_fetcher_sheds_before_fetching_what_its_lagging_next_stage_would_shed(kafka: None, tmp_path: Path) -> None:
    tweets, images = fresh_topics("tweets", "images")
    ensure_topics(KafkaSettings(), [TopicSpec(tweets + ".shed", 1), TopicSpec(tweets + ".dlq", 1)])
    next_stage = f"test-classifier-{uuid.uuid4().hex[:8]}"
    # The next stage is 90 records behind on the fetcher's output.
    backlog = [image_record(f"backlog-{i}", photo_pixels(1)[0]) for i in range(90)]
    produce(images, backlog)
    commit(next_stage, images, {p: 0 for p in range(3)})
    port = free_port()
    env = {
        "FETCHER_INPUT_TOPIC": tweets,
        "FETCHER_OUTPUT_TOPIC": images,
        "FETCHER_GROUP_ID": f"test-fetcher-{uuid.uuid4().hex[:8]}",
        "FETCHER_METRICS_PORT": str(port),
        "FETCHER_ALLOW_PRIVATE_NETWORKS": "true",
        "FETCHER_DOWNSTREAM_GROUP": next_stage,
        # keep only high priority while 50 or more records wait, here or in the next stage
        "FETCHER_SHED_LEVELS": json.dumps([{"min_priority": HIGH, "lag_records": 50, "lag_seconds": 3600}]),
        "FETCHER_SHED_MIN_DWELL_S": "1",
    }
    with ImageServer() as server, service("fetcher", env, tmp_path / "fetcher.log", port):
        wait_until("the fetcher to shed", lambda: metric(port, "tagstream_shed_level", 'stage="fetcher"') == 1, 60)
        posts = [tweet_record(50_000 + i, f"{server.origin}/{i % 8}.png?post={i}", HIGH if i % 4 == 0 else LOW)
                 for i in range(20)]  # fmt: skip
        produce(tweets, posts, codec=TWEETS)
        high = {p["tweet_id"] for p in posts if p["priority"] == HIGH}
        low = {p["tweet_id"] for p in posts} - high
        fetched = consume(images, expected=len(backlog) + len(high), timeout_s=60, codec=IMAGES)
        wait_until(
            "the drops", lambda: metric(port, "tagstream_records_shed_total", f'priority="{LOW}"') == len(low), 60
        )
        shed_requests = [path for path in server.requested if int(path.rsplit("=", 1)[1]) % 4 != 0]

        # The next stage catches up: after the dwell time the fetcher fetches low priority again.
        commit(next_stage, images, high_watermarks(images))
        wait_until(
            "the fetcher to stop shedding", lambda: metric(port, "tagstream_shed_level", 'stage="fetcher"') == 0, 60
        )
        later = [tweet_record(60_000 + i, f"{server.origin}/{i % 8}.png?post=later{i}", LOW) for i in range(5)]
        produce(tweets, later, codec=TWEETS)
        fetched = consume(images, expected=len(backlog) + len(high) + len(later), timeout_s=60, codec=IMAGES)

    audit = read_all(tweets + ".shed", until=time.monotonic() + 5)
    fetched_ids = {r["tweet_id"] for r in fetched}
    assert high <= fetched_ids, "every high-priority post is fetched"
    assert not low & fetched_ids, "no low-priority post is fetched while the next stage is behind"
    assert shed_requests == [], "a shed post's image is never downloaded"
    assert {key for key, _ in audit} == low
    assert all(int(headers["lag_records"]) >= 50 for _, headers in audit), "the drop says how far behind"
    assert {r["tweet_id"] for r in later} <= fetched_ids, "low priority is fetched again once the next stage caught up"
