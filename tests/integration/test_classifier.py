"""The classifier on a real Triton: its scores, and what it does when Triton goes away."""

from __future__ import annotations

import io
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from confluent_kafka import Consumer, Producer

from services.common.avro import IMAGES, PREDICTIONS, TWEETS, Codec, nest_origin
from services.common.envelope import Envelope
from services.fetcher.imaging import PIXEL_FORMAT, to_model_input
from tools import demo_data

from .processes import ROOT, Triton, free_port, fresh_topics, service

pytestmark = pytest.mark.integration

MODELS = ROOT / "model_repository" / "cpu"
LABELS = (MODELS / "resnet50" / "labels.txt").read_text().split()


def photo_pixels(count: int) -> list[bytes]:
    pixels = []
    for i in range(count):
        buffer = io.BytesIO()
        demo_data.photo(i, (600, 400)).save(buffer, "JPEG", quality=90)
        pixels.append(to_model_input(buffer.getvalue(), 224, 10_000_000).pixels)
    return pixels


def image_record(tweet_id: str, pixels: bytes) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "tweet_id": tweet_id,
        "media_key": f"3_{tweet_id}",
        "image_url": f"https://pbs.example/{tweet_id}.jpg",
        "post_url": f"https://x.com/i/web/status/{tweet_id}",
        "text": "a test image",
        "author_username": None,
        "priority": 1,
        "ingest_ts_ms": now,
        "fetch_ts_ms": now,
        "source_width": 600,
        "source_height": 400,
        "source_format": "JPEG",
        "pixel_format": PIXEL_FORMAT,
        "height": 224,
        "width": 224,
        "pixels": pixels,
    }


def produce(
    topic: str, records: list[dict[str, Any]], per_second: float = 0.0, codec: Codec = IMAGES, headers: bool = True
) -> None:
    """Write the tests' flat records as the stages do: `origin` nested (images, predictions),
    the envelope in headers (unless `headers` is False, as an older producer wrote them)."""
    producer = Producer({"bootstrap.servers": "localhost:9092"})
    for record in records:
        wire = record if codec is TWEETS else nest_origin(record)
        envelope: list[tuple[str, str | bytes | None]] | None = None
        if headers:
            envelope = [*Envelope(record["priority"], record["ingest_ts_ms"]).headers()]
        producer.produce(topic, codec.encode(wire), key=record["tweet_id"], headers=envelope)
        producer.poll(0)
        if per_second:
            time.sleep(1 / per_second)
    assert producer.flush(30) == 0


def consume(topic: str, expected: int, timeout_s: float, codec: Codec = PREDICTIONS) -> list[dict[str, Any]]:
    """The records of `topic`, flat (`origin`'s fields beside the others) as the tests build them."""
    consumer = Consumer(
        {"bootstrap.servers": "localhost:9092", "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                records.append(flatten(codec.decode(message.value())))
        # anything beyond `expected` would be a duplicate: give it a moment to show up
        end = time.monotonic() + 2
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                records.append(flatten(codec.decode(message.value())))
    finally:
        consumer.close()
    return records


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """`origin`'s fields beside the record's own, as the tests' records are built."""
    if "origin" not in record:
        return record
    return {**record["origin"], **{key: value for key, value in record.items() if key != "origin"}}


def classifier_env(topics: list[str], triton_url: str, model: str, port: int) -> dict[str, str]:
    return {
        "CLASSIFIER_INPUT_TOPIC": topics[0],
        "CLASSIFIER_OUTPUT_TOPIC": topics[1],
        "CLASSIFIER_GROUP_ID": f"test-classifier-{uuid.uuid4().hex[:8]}",
        "CLASSIFIER_TRITON_URL": triton_url,
        "CLASSIFIER_MODEL_NAME": model,
        "CLASSIFIER_METRICS_PORT": str(port),
        "CLASSIFIER_MAX_BATCH_SIZE": "8",
    }


def test_scores_equal_onnxruntime_on_the_same_pixels(kafka: None, triton: None, tmp_path: Path) -> None:
    topics = fresh_topics("images", "predictions")
    pixels = photo_pixels(12)
    records = [image_record(str(10_000 + i), p) for i, p in enumerate(pixels)]
    produce(topics[0], records)
    port = free_port()
    env = classifier_env(topics, "localhost:8001", "resnet50", port)
    with service("classifier", env, tmp_path / "classifier.log", port):
        predictions = consume(topics[1], len(records), timeout_s=180)
    assert sorted(p["tweet_id"] for p in predictions) == sorted(r["tweet_id"] for r in records)

    session = ort.InferenceSession(str(MODELS / "resnet50" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([np.frombuffer(p, np.uint8).reshape(224, 224, 3) for p in pixels])
    (expected,) = session.run(["scores"], {"image": batch})
    by_id = {p["tweet_id"]: p for p in predictions}
    for i, record in enumerate(records):
        got = np.array([by_id[record["tweet_id"]]["scores"][label] for label in LABELS])
        np.testing.assert_allclose(got, expected[i], atol=1e-4)
        assert by_id[record["tweet_id"]]["model_name"] == "resnet50"


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[Triton]:
    """A Triton of this test's own serving only the do-nothing model, so it can be stopped."""
    repository = tmp_path / "models"
    shutil.copytree(MODELS / "noop", repository / "noop")
    triton = Triton(tmp_path / "triton-run", repository, ready_model="noop")
    triton.start()
    yield triton
    triton.stop()


def test_a_triton_outage_loses_nothing_and_duplicates_nothing(kafka: None, own_triton: Triton, tmp_path: Path) -> None:
    topics = fresh_topics("images", "predictions")
    pixels = photo_pixels(1)[0]
    records = [image_record(str(20_000 + i), pixels) for i in range(240)]
    port = free_port()
    # every copy of the one image must reach Triton: the prediction cache would serve them all
    env = classifier_env(topics, own_triton.grpc_url, "noop", port) | {"CLASSIFIER_PREDICTION_CACHE_TTL_S": "0"}
    with service("classifier", env, tmp_path / "classifier.log", port):
        feeder = threading.Thread(target=produce, args=(topics[0], records, 40.0))
        feeder.start()  # 6 s of input; Triton is away for about 3 s of it
        time.sleep(1.5)
        own_triton.stop()
        time.sleep(3)
        own_triton.start()
        feeder.join()
        predictions = consume(topics[1], len(records), timeout_s=120)
    log = (tmp_path / "classifier.log").read_text()
    assert "dependency unavailable, will retry" in log  # the outage was really seen
    ids = [p["tweet_id"] for p in predictions]
    assert sorted(ids) == sorted(r["tweet_id"] for r in records)  # nothing lost
    assert len(ids) == len(set(ids))  # nothing produced twice
