"""The stream loop wired from its parts, on an in-memory broker (tests/fakes/kafka.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError

from services.common import metrics
from services.common.admission import Admission
from services.common.avro import TWEETS, Codec, Record
from services.common.commits import AtLeastOnce, Commits, ExactlyOnce
from services.common.delivery import Backoff
from services.common.envelope import Envelope, from_headers
from services.common.errors import RecordError, RetryableError
from services.common.process import DeadLetter, Output, Processor
from services.common.settings import StreamSettings
from services.common.shedding import ShedLevel
from services.common.stream import StreamLoop
from tests.fakes.kafka import FakeBroker, FakeConsumer, FakeProducer, FakeTransactionalProducer

IN, OUT = "in", "out"
P0, P1 = (IN, 0), (IN, 1)
FAST = Backoff(0.001, 0.01)
Handle = Callable[[Record], Awaitable[Sequence[Output | DeadLetter]]]


def tweet(tweet_id: str, priority: int = 1) -> Record:
    return {
        "tweet_id": tweet_id,
        "text": "t",
        "author_id": None,
        "author_username": None,
        "created_at": None,
        "lang": None,
        "post_url": f"https://x.com/i/web/status/{tweet_id}",
        "media": [],
        "matching_rules": [],
        "priority": priority,
        "ingest_ts_ms": 1_700_000_000_000,
    }


@dataclass(frozen=True)
class CountingCodec(Codec):
    decoded: list[bytes] = field(default_factory=list, compare=False)

    def decode(self, data: bytes | None) -> Record:
        self.decoded.append(data or b"")
        return super().decode(data)


@dataclass
class Harness:
    broker: FakeBroker
    consumer: FakeConsumer
    producer: FakeProducer
    loop: StreamLoop
    codec: CountingCodec
    stage: str
    fatal: list[str]
    task: asyncio.Task[None] | None

    def put(self, tweet_id: str, partition: int = 0, priority: int = 1, headers: bool = True) -> None:
        record = tweet(tweet_id, priority)
        envelope = Envelope(priority, record["ingest_ts_ms"]).headers() if headers else None
        self.broker.append(IN, TWEETS.encode(record), partition=partition, key=tweet_id, headers=envelope)

    def written(self, topic: str) -> list[str]:
        return [str(m.key()) for m in self.broker.records(topic)]


_stages = iter(range(1_000_000))


def numbered(count: int) -> Callable[[Harness], None]:
    """A setup that puts tweets "0" .. "<count - 1>" on partition 0."""

    def setup(h: Harness) -> None:
        for i in range(count):
            h.put(str(i))

    return setup


def lettered(count: int) -> Callable[[Harness], None]:
    """A setup that puts tweets "a0" .. on partition 0 and "b0" .. on partition 1, `count` each."""

    def setup(h: Harness) -> None:
        for i in range(count):
            h.put(f"a{i}", partition=0)
            h.put(f"b{i}", partition=1)

    return setup


@asynccontextmanager
async def running(
    handle: Handle,
    *,
    partitions: Sequence[tuple[str, int]] = (P0,),
    max_in_flight: int = 16,
    consume_batch_size: int = 64,
    shed_levels: list[ShedLevel] | None = None,
    failures: dict[str, list[int]] | None = None,
    setup: Callable[[Harness], None] | None = None,
    exactly_once: bool = False,
    commit_errors: list[KafkaError] | None = None,
    expect_fatal: bool = False,
) -> Any:
    """A loop over a fresh broker, running until the block ends; each has a stage of its own for its metrics."""
    stage = f"test-{next(_stages)}"
    broker = FakeBroker()
    fatal: list[str] = []
    stop = asyncio.Event()

    def on_fatal(reason: str) -> None:  # what the process's runtime does: note it, and stop
        fatal.append(reason)
        stop.set()

    settings = StreamSettings(
        input_topic=IN,
        group_id="g",
        output_topic=OUT,
        max_in_flight=max_in_flight,
        consume_batch_size=consume_batch_size,
        shedding_enabled=bool(shed_levels),
        shed_levels=shed_levels or [],
        shed_min_dwell_s=3600,
        commit_interval_s=0.001,
    )
    consumer = FakeConsumer(broker, partitions)
    codec = CountingCodec(TWEETS.name, TWEETS.versions)
    processor = Processor(stage, settings, codec, handle, Admission(stage, settings), retry=FAST)
    commits: Commits
    if exactly_once:
        producer: FakeProducer = FakeTransactionalProducer(broker, commit_errors)
        producer.failures = failures or {}
        commits = ExactlyOnce(producer, stage, on_fatal, commit_interval_s=0.001, backoff=FAST)  # type: ignore[arg-type]
    else:
        producer = FakeProducer(broker, failures)
        commits = AtLeastOnce(producer, stage, FAST)
    loop = StreamLoop(processor, consumer, commits, pause_after_s=0.05)
    harness = Harness(broker, consumer, producer, loop, codec, stage, fatal, task=None)
    if setup is not None:
        setup(harness)
    harness.task = task = asyncio.create_task(loop.run(stop))
    try:
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert bool(fatal) == expect_fatal, fatal


async def eventually(what: str, check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


class Gates:
    """A handler whose calls wait, per tweet id and per call, until the test opens them."""

    def __init__(self) -> None:
        self._gates: dict[tuple[str, int], asyncio.Event] = {}
        self.calls: dict[str, int] = {}
        self.cancelled: set[tuple[str, int]] = set()

    def gate(self, tweet_id: str, call: int = 1) -> asyncio.Event:
        return self._gates.setdefault((tweet_id, call), asyncio.Event())

    def open(self, tweet_id: str, call: int = 1) -> None:
        self.gate(tweet_id, call).set()

    async def handle(self, record: Record) -> list[Output]:
        tweet_id = record["tweet_id"]
        self.calls[tweet_id] = call = self.calls.get(tweet_id, 0) + 1
        try:
            await self.gate(tweet_id, call).wait()
        except asyncio.CancelledError:
            self.cancelled.add((tweet_id, call))
            raise
        return [Output(OUT, b"done:" + tweet_id.encode(), key=tweet_id)]


async def test_commit_moves_only_past_records_finished_in_order() -> None:
    gates = Gates()
    async with running(gates.handle, setup=numbered(4)) as h:
        await eventually("all four in flight", lambda: len(gates.calls) == 4)
        gates.open("2")
        gates.open("3")
        await eventually("2 and 3 written", lambda: h.written(OUT) == ["2", "3"])
        await asyncio.sleep(0.05)
        assert P0 not in h.consumer.stored, "offset 0 is unfinished: nothing may be stored"
        gates.open("0")
        await eventually("position 1 stored", lambda: h.consumer.stored.get(P0) == 1)
        gates.open("1")
        await eventually("position 4 stored", lambda: h.consumer.stored.get(P0) == 4)
    assert h.consumer.committed_offsets[P0] == 4


async def test_a_revoked_partition_commits_its_finished_prefix_and_stops_the_rest() -> None:
    gates = Gates()

    async with running(gates.handle, partitions=(P0, P1), setup=lettered(3)) as h:
        await eventually("all six in flight", lambda: len(gates.calls) == 6)
        for i in range(3):
            gates.open(f"b{i}")
        gates.open("a0")
        await eventually("a0 and partition 1 stored", lambda: h.consumer.stored == {P0: 1, P1: 3})
        # Partition 0 goes away and comes back while a1 and a2 are still in flight: they are
        # stopped, and read again from the committed position.
        h.consumer.revoke([P0])
        h.consumer.assign([P0])
        await eventually("a1, a2 read again", lambda: gates.calls.get("a1") == 2 and gates.calls.get("a2") == 2)
        assert h.consumer.committed_offsets[P0] == 1, "the revocation committed the finished prefix"
        await eventually("the first calls stopped", lambda: {("a1", 1), ("a2", 1)} <= gates.cancelled)
        assert P0 not in h.consumer.stored
        gates.open("a1", call=2)
        gates.open("a2", call=2)
        await eventually("partition 0 stored to its end", lambda: h.consumer.stored.get(P0) == 3)
    assert h.written(OUT).count("a1") == h.written(OUT).count("a2") == 1


async def test_a_lost_partition_commits_nothing_and_stops_its_records() -> None:
    gates = Gates()

    def setup(h: Harness) -> None:
        h.put("a0", partition=0)
        h.put("b0", partition=1)
        h.put("b1", partition=1)

    async with running(gates.handle, partitions=(P0, P1), setup=setup) as h:
        await eventually("all in flight", lambda: len(gates.calls) == 3)
        h.consumer.lose([P1])
        h.consumer.assign([P1])  # given back: read again from the start, nothing was committed
        await eventually("b0, b1 read again", lambda: gates.calls.get("b0") == 2 and gates.calls.get("b1") == 2)
        await eventually("the first calls stopped", lambda: {("b0", 1), ("b1", 1)} <= gates.cancelled)
        gates.open("a0")
        await eventually("partition 0 stored", lambda: h.consumer.stored.get(P0) == 1)
        assert P1 not in h.consumer.stored
        gates.open("b0", call=2)
        gates.open("b1", call=2)
        await eventually("partition 1 stored", lambda: h.consumer.stored.get(P1) == 2)
    assert sorted(h.written(OUT)) == ["a0", "b0", "b1"]


async def test_a_full_window_pauses_the_input_until_there_is_room() -> None:
    gates = Gates()
    async with running(gates.handle, max_in_flight=2, setup=numbered(5)) as h:
        await eventually("paused", lambda: h.consumer.paused == {P0})
        assert len(gates.calls) == 2, "no more than the window is read"
        assert h.consumer.resume_calls == 0
        gates.open("0")
        gates.open("1")
        await eventually("resumed", lambda: h.consumer.resume_calls == 1 and not h.consumer.paused)
        for tweet_id in ("2", "3", "4"):
            await eventually(f"{tweet_id} read", partial(gates.calls.__contains__, tweet_id))
            gates.open(tweet_id)
        await eventually("all stored", lambda: h.consumer.stored.get(P0) == 5)


async def test_a_partition_assigned_while_paused_does_not_grow_the_window() -> None:
    gates = Gates()

    async with running(gates.handle, partitions=(P0,), max_in_flight=2, setup=lettered(3)) as h:
        await eventually("paused", lambda: h.consumer.paused == {P0})
        h.consumer.assign([P1])
        await eventually("the new partition paused too", lambda: h.consumer.paused == {P0, P1})
        await asyncio.sleep(1.2)  # a few of the polls that keep the membership alive
        assert len(gates.calls) == 2, f"the window grew: {sorted(gates.calls)}"
        for tweet_id in ("a0", "a1", "a2", "b0", "b1", "b2"):
            await eventually(f"{tweet_id} read", partial(gates.calls.__contains__, tweet_id))
            gates.open(tweet_id)
        await eventually("all stored", lambda: h.consumer.stored == {P0: 3, P1: 3})
    assert sorted(h.written(OUT)) == ["a0", "a1", "a2", "b0", "b1", "b2"], "each once"


async def test_a_failed_dead_letter_write_is_retried_and_nothing_is_committed_past_it() -> None:
    async def handle(record: Record) -> list[Output]:
        if record["tweet_id"] == "bad":
            raise RecordError("broken", "cannot be processed")
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    timed_out = KafkaError._MSG_TIMED_OUT
    seen_stored: list[int | None] = []

    def setup(h: Harness) -> None:
        for tweet_id in ("0", "bad", "2"):
            h.put(tweet_id)
        send = h.producer.send

        def watching(record: Any) -> Any:
            if record.topic == IN + ".dlq":
                seen_stored.append(h.consumer.stored.get(P0))
            return send(record)

        h.producer.send = watching  # type: ignore[method-assign]

    before = metrics.DELIVERY_RETRIES
    async with running(handle, failures={IN + ".dlq": [timed_out] * 4}, setup=setup) as h:
        await eventually("everything stored", lambda: h.consumer.stored.get(P0) == 3)
        assert h.written(IN + ".dlq") == ["bad"]
        assert h.written(OUT) == ["0", "2"]
        assert before.labels(h.stage)._value.get() == 4
    assert len(seen_stored) == 5
    assert all(position is None or position <= 1 for position in seen_stored), seen_stored
    (letter,) = h.broker.records(IN + ".dlq")
    headers = dict(letter.headers() or [])
    assert headers["error"] == b"broken"
    assert headers["source_offset"] == b"1"
    assert from_headers(letter.headers()) == Envelope(1, 1_700_000_000_000)


async def test_a_refused_output_dead_letters_its_input() -> None:
    async def handle(record: Record) -> list[Output]:
        return [Output(OUT, b"x" * 10, key=record["tweet_id"])]

    async with running(handle, failures={OUT: [KafkaError.MSG_SIZE_TOO_LARGE]}, setup=lambda h: h.put("big")) as h:
        await eventually("stored", lambda: h.consumer.stored.get(P0) == 1)
    (letter,) = h.broker.records(IN + ".dlq")
    assert dict(letter.headers() or [])["error"] == b"output_refused"


async def test_a_dependency_outage_is_retried_not_dead_lettered() -> None:
    calls = 0

    async def handle(record: Record) -> list[Output]:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise RetryableError("model not ready")
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    async with running(handle, setup=lambda h: h.put("1")) as h:
        await eventually("stored", lambda: h.consumer.stored.get(P0) == 1)
        assert h.written(OUT) == ["1"]
        assert h.written(IN + ".dlq") == []


async def test_shedding_is_decided_from_the_headers_before_the_value_is_decoded() -> None:
    handled: list[str] = []

    async def handle(record: Record) -> list[Output]:
        handled.append(record["tweet_id"])
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    def setup(h: Harness) -> None:
        for i in range(20):  # read one at a time: the first reads are far behind the high watermark
            h.put(f"low{i}", priority=0, headers=i % 4 != 0)
        h.put("high", priority=2)

    levels = [ShedLevel(min_priority=1, lag_records=5, lag_seconds=3600)]
    async with running(handle, consume_batch_size=1, shed_levels=levels, setup=setup) as h:
        await eventually("all stored", lambda: h.consumer.stored.get(P0) == 21)
        shed = h.written(IN + ".shed")
        assert "high" in handled
        assert shed, "nothing was shed"
        assert not set(shed) & set(handled)
        with_headers = [k for k in shed if int(k.removeprefix("low")) % 4 != 0]
        without = [k for k in shed if int(k.removeprefix("low")) % 4 == 0]
        assert with_headers
        assert without
        # Decoded: the records without headers (to learn their priority) and the kept ones.
        assert len(h.codec.decoded) == len(without) + len(handled)
        assert metrics.SHED_DECODED.labels(h.stage)._value.get() == len(without)
        for message in h.broker.records(IN + ".shed"):
            assert from_headers(message.headers()) == Envelope(0, 1_700_000_000_000)
            assert dict(message.headers() or [])["reason"] == b"shed"


async def test_outputs_carry_the_envelope_forward_and_headerless_input_gets_it_from_the_value() -> None:
    async def handle(record: Record) -> list[Output]:
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    def setup(h: Harness) -> None:
        h.put("with", priority=2)
        h.put("without", priority=1, headers=False)

    async with running(handle, setup=setup) as h:
        await eventually("stored", lambda: h.consumer.stored.get(P0) == 2)
    envelopes = {m.key(): from_headers(m.headers()) for m in h.broker.records(OUT)}
    assert envelopes == {
        "with": Envelope(2, 1_700_000_000_000),
        "without": Envelope(1, 1_700_000_000_000),
    }
