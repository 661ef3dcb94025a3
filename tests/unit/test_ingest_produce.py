"""What one payload becomes: a record, a dead letter, a skip, a duplicate; and what is recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from services.common.avro import TWEETS
from services.common.envelope import Envelope, from_headers
from services.common.kafka import AsyncProducer
from services.ingest.dedup import RecentIds
from services.ingest.payload import parse_line
from services.ingest.produce import PayloadFile, PayloadProducer
from tests.fakes.kafka import FakeBroker, FakeProducer
from tests.fakes.x_api import post


@pytest.fixture
async def producer() -> AsyncIterator[AsyncProducer]:
    # A real producer; `prepare` never sends, so no broker is needed.
    real = AsyncProducer({"bootstrap.servers": "127.0.0.1:9"})
    yield real
    await real.close()


def line(payload: dict[str, object]) -> bytes:
    return json.dumps(payload).encode() + b"\r\n"


def payloads_for(producer: AsyncProducer, recording: PayloadFile | None = None) -> PayloadProducer:
    return PayloadProducer(
        producer,
        output_topic="out",
        dlq_topic="out.dlq",
        priorities={"targeted:cats": 5},
        default_priority=0,
        source="x_stream",
        recent=RecentIds(100),
        recording=recording,
    )


async def test_a_post_becomes_a_keyed_record_and_a_repeat_is_dropped(producer: AsyncProducer) -> None:
    payloads = payloads_for(producer)
    first = payloads.prepare(line(post("11")))
    assert first is not None
    assert (first.record.topic, first.record.key, first.tweet_id) == ("out", "11", "11")
    record = TWEETS.decode(first.record.value)
    assert record["priority"] == 5
    assert from_headers(first.record.headers) == Envelope(5, record["ingest_ts_ms"])
    assert payloads.prepare(line(post("11"))) is None
    assert payloads.tally.duplicates == 1
    assert payloads.tally.lines == 2


async def test_keep_alives_posts_without_images_and_broken_lines(producer: AsyncProducer) -> None:
    payloads = payloads_for(producer)
    assert payloads.prepare(b"\r\n") is None
    assert payloads.prepare(line(post("12", images=0))) is None
    letter = payloads.prepare(b'{"data": ')
    assert letter is not None
    assert letter.record.topic == "out.dlq"
    assert dict(letter.record.headers)["error"] == b"bad_json"
    assert letter.tweet_id is None
    assert payloads.tally.lines == 2
    assert payloads.tally.without_images == 1
    assert payloads.tally.dead_letters == {"bad_json": 1}


async def test_the_recording_holds_every_payload_but_keep_alives_and_duplicates(
    producer: AsyncProducer, tmp_path: Path
) -> None:
    recording = PayloadFile(tmp_path / "rec" / "stream.jsonl")
    payloads = payloads_for(producer, recording)
    for raw in (line(post("1")), b"\r\n", line(post("1")), line(post("2", images=0)), b"not json\r\n"):
        payloads.prepare(raw)
    recording.close()
    written = (tmp_path / "rec" / "stream.jsonl").read_bytes().split(b"\n")
    assert written[-1] == b""  # every line ends with a newline
    assert written[:-1] == [line(post("1")).strip(), line(post("2", images=0)).strip(), b"not json"]
    assert parse_line(written[0]) == post("1")


async def test_a_repeated_post_without_images_is_a_duplicate_too(producer: AsyncProducer) -> None:
    payloads = payloads_for(producer)
    assert payloads.prepare(line(post("13", images=0))) is None
    assert payloads.prepare(line(post("13", images=0))) is None
    assert (payloads.tally.without_images, payloads.tally.duplicates) == (1, 1)


async def test_a_post_the_broker_refuses_for_its_size_becomes_a_dead_letter_and_the_stream_goes_on() -> None:
    broker = FakeBroker()
    fake = FakeProducer(broker, {"out": [KafkaError.MSG_SIZE_TOO_LARGE]})
    payloads = PayloadProducer(
        fake, output_topic="out", dlq_topic="out.dlq", priorities={}, default_priority=0, source="test"
    )
    huge, small = line(post("21")), line(post("22"))
    for raw in (huge, small):
        outgoing = payloads.prepare(raw)
        assert outgoing is not None
        await payloads.send(outgoing)
    assert [m.key() for m in broker.records("out")] == ["22"]
    (letter,) = broker.records("out.dlq")
    headers = dict(letter.headers() or [])
    assert headers["error"] == b"too_large"
    assert headers["value_truncated"] == b"%d bytes: too_large" % len(huge.strip())
    assert letter.value() == huge.strip()
    assert from_headers(letter.headers()) is not None
    assert (payloads.tally.produced, payloads.tally.refused) == (1, 1)
