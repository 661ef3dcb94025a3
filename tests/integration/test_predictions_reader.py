"""`python -m tools.predictions` on the real broker, on a fresh topic: one JSON line per committed
prediction, version 1 records read in version 2's shape, filters, an error line for a record it
cannot read, following new records, and a clean end on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from confluent_kafka import Producer

from services.common.avro import PREDICTIONS
from services.common.settings import KafkaSettings

from .conftest import ROOT
from .processes import fresh_topics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]

KAFKA = KafkaSettings()
GOLDEN_V1 = (Path(__file__).resolve().parents[1] / "unit" / "golden" / "predictions.v1.avro").read_bytes()


def prediction(tweet_id: str, *hashtags: tuple[str, float]) -> bytes:
    return PREDICTIONS.encode(
        {
            "origin": {
                "tweet_id": tweet_id,
                "media_key": "3_1",
                "image_url": "https://img/1.jpg",
                "post_url": f"https://x.com/i/web/status/{tweet_id}",
                "text": "a cat, \u00e9t\u00e9 \U0001f431",
                "author_username": None,
                "priority": 1,
                "ingest_ts_ms": 1_796_000_000_000,
            },
            "hashtags": [{"hashtag": h, "score": s} for h, s in hashtags],
            "scores": dict(hashtags),
            "model_name": "resnet50",
            "model_version": "1",
            "fetch_ts_ms": 1_796_000_000_100,
            "classify_ts_ms": 1_796_000_000_200,
            "inference_ms": 3.5,
            "batch_size": 2,
        }
    )


def produce(topic: str, values: list[bytes], *, abort: bool = False) -> None:
    """`values` in one transaction, committed or aborted."""
    producer = Producer(KAFKA.client_config() | {"transactional.id": f"test-predictions-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, value, key=b"k", partition=0)
    if abort:
        producer.abort_transaction(30)
    else:
        producer.commit_transaction(30)


def reader(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.predictions", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tweet_ids(lines: list[str]) -> list[str]:
    return [json.loads(line)["prediction"]["origin"]["tweet_id"] for line in lines if line.strip()]


@pytest.fixture
def topic() -> str:
    (name,) = fresh_topics("predictions", partitions=1)
    broken = b"\xc3\x01" + PREDICTIONS.fingerprint + b"\x02"  # framed right, the body cut short
    produce(name, [prediction("1", ("cats", 0.9)), GOLDEN_V1, broken, prediction("3", ("dogs", 0.6))])
    produce(name, [prediction("aborted", ("cats", 0.99))], abort=True)
    produce(name, [prediction("4", ("cats", 0.7), ("dogs", 0.2))])
    return name


def test_it_prints_every_committed_prediction_and_an_error_line_for_a_bad_record(topic: str) -> None:
    done = reader("--topic", topic, "--from-beginning")
    out, err = done.communicate(timeout=60)

    assert done.returncode == 0, err
    assert tweet_ids(out.splitlines()) == ["1", "1790000000000000001", "3", "4"]
    first, old = (json.loads(line) for line in out.splitlines()[:2])
    assert first["partition"] == 0
    assert first["offset"] == 0
    assert first["prediction"]["origin"]["text"] == "a cat, \u00e9t\u00e9 \U0001f431"
    assert first["prediction"]["hashtags"] == [{"hashtag": "cats", "score": pytest.approx(0.9)}]
    # version 1 (flat) in version 2's shape
    assert old["prediction"]["origin"]["media_key"] == "3_1"
    assert "tweet_id" not in old["prediction"]
    errors = [json.loads(line) for line in err.splitlines() if '"error"' in line]
    assert errors == [{"error": "bad_avro", "detail": errors[0]["detail"], "partition": 0, "offset": 2}]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--hashtag", "cats"], ["1", "1790000000000000001", "4"]),
        (["--hashtag", "#cats", "--min-score", "0.8"], ["1"]),
        (["--min-score", "0.65"], ["1", "1790000000000000001", "4"]),
        (["--hashtag", "dogs", "--min-score", "0.5"], ["3"]),
    ],
)
def test_filters_by_hashtag_and_score(topic: str, filters: list[str], expected: list[str]) -> None:
    done = reader("--topic", topic, "--from-beginning", *filters)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert tweet_ids(out.splitlines()) == expected


@pytest.fixture
def following(topic: str) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """A reader following `topic` from its end, its stdout lines in a queue, once it says it reads."""
    process = reader("--topic", topic, "--follow")
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    try:
        assert process.stderr is not None
        announced = json.loads(process.stderr.readline())
        assert announced == {"reading": topic, "partitions": 1, "from": "the end"}
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    assert stream is not None
    for text in stream:
        lines.put(text)


def test_it_follows_new_predictions_and_ends_cleanly_on_ctrl_c(
    topic: str, following: tuple[subprocess.Popen[str], queue.Queue[str]]
) -> None:
    process, lines = following
    produce(topic, [prediction("5", ("cats", 0.8))])
    got: Any = json.loads(lines.get(timeout=30))
    assert got["prediction"]["origin"]["tweet_id"] == "5", "only what came after it started"
    assert got["offset"] > 6

    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 0
    assert time.monotonic() - started < 10
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()
    assert lines.empty()
