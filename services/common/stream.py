"""The consume → process → produce loop every consuming service runs.

A service supplies one coroutine, `handle(record) -> outputs`; the loop owns the rest:
decoding, bounded concurrency, delivery, dead letters, retries and commits. Offsets are
stored only after every output of a record (or its dead letter) is acknowledged by the
broker, and only up to the first unfinished record of each partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka.aio import AIOConsumer

from . import metrics
from .avro import AvroDecodeError, Codec
from .downstream import DownstreamWatch
from .kafka import AUTO_COMMIT_INTERVAL_S, AsyncProducer, Headers, consumer_config, new_consumer, producer_config
from .offsets import PartitionOffsets
from .runtime import Runtime
from .settings import StreamSettings
from .shedding import Lag, ShedPolicy
from .timeutil import now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    value: bytes
    key: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """Part of a record failed (one image of a post): the input goes to the DLQ for that part."""

    reason: str
    detail: str = ""
    headers: tuple[tuple[str, str], ...] = ()


class RecordError(Exception):
    """This record can never be processed: it goes to the dead-letter topic with `reason`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryableError(Exception):
    """A dependency is unavailable: retry the record later, never drop or commit it."""


Handler = Callable[[dict[str, Any]], Awaitable[Sequence[Output | DeadLetter]]]


class StreamLoop:
    def __init__(
        self,
        *,
        stage: str,
        settings: StreamSettings,
        codec: Codec,
        handle: Handler,
        producer: AsyncProducer,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        pause_after_s: float = 2.0,
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.codec = codec
        self.handle = handle
        self.producer = producer
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.pause_after_s = pause_after_s
        self.assigned = False
        self._offsets: dict[tuple[str, int], PartitionOffsets] = {}
        #: commit positions ready to be stored, stored in one call per loop turn
        self._positions: dict[tuple[str, int], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = metrics.IN_FLIGHT.labels(stage)
        self._lag: dict[tuple[str, int], Lag] = {}
        self._downstream: DownstreamWatch | None = None
        self.shedding = ShedPolicy(
            settings.shed_levels if settings.shedding_enabled else [],
            exit_ratio=settings.shed_exit_ratio,
            min_dwell_s=settings.shed_min_dwell_s,
        )
        # Series that exist from the start, so dashboards show a zero rather than nothing.
        metrics.RECORDS_CONSUMED.labels(stage, settings.input_topic)
        metrics.PROCESSING_SECONDS.labels(stage)
        metrics.SHED_LEVEL.labels(stage).set(0)
        metrics.SHED_MIN_PRIORITY.labels(stage).set(float("nan"))

    def readiness(self) -> str | None:
        return None if self.assigned else f"{self.stage} has no partitions of {self.settings.input_topic} yet"

    async def run(self, stop: asyncio.Event) -> None:
        config = consumer_config(self.settings.kafka, self.settings.group_id, f"tagstream-{self.stage}")
        consumer = new_consumer(config)
        await consumer.subscribe(
            [self.settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("consuming", extra={"fields": {"topic": self.settings.input_topic, "group": self.settings.group_id}})
        watching = self._watch_downstream(stop)
        try:
            while not stop.is_set():
                await self._store_positions(consumer)
                room = self.settings.max_in_flight - len(self._tasks)
                if room <= 0:
                    await self._wait_for_room(consumer, stop)
                    continue
                messages = await consumer.consume(num_messages=min(room, self.settings.consume_batch_size), timeout=0.5)
                await self._measure_lag(consumer, messages)
                for message in messages:
                    self._start(message)
        finally:
            if watching is not None:
                watching.cancel()
            await self._drain()
            await self._store_positions(consumer)
            await consumer.close()
            log.info("consumer closed", extra={"fields": {"stage": self.stage}})

    def _watch_downstream(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Start following the next stage's lag, when shedding is on and that stage is named."""
        settings = self.settings
        if not (self.shedding.levels and settings.downstream_group and settings.output_topic):
            return None
        self._downstream = DownstreamWatch(
            settings.kafka, self.stage, settings.output_topic, settings.downstream_group, grace_s=AUTO_COMMIT_INTERVAL_S
        )
        return asyncio.create_task(self._downstream.run(stop))

    async def _wait_for_room(self, consumer: AIOConsumer, stop: asyncio.Event) -> None:
        """Wait while the in-flight window is full.

        A short wait needs nothing more. A long one (a dependency down) pauses the
        partitions and keeps polling, so the group does not evict this consumer; pausing
        drops what librdkafka had prefetched, which is why it is not done at once.
        """
        await asyncio.wait(self._tasks, timeout=self.pause_after_s, return_when=asyncio.FIRST_COMPLETED)
        if len(self._tasks) < self.settings.max_in_flight or stop.is_set():
            return
        partitions = await consumer.assignment()
        await consumer.pause(partitions)
        log.info("input paused: in-flight window full", extra={"fields": {"in_flight": len(self._tasks)}})
        try:
            while len(self._tasks) >= self.settings.max_in_flight and not stop.is_set():
                await self._store_positions(consumer)
                done, _ = await asyncio.wait(self._tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # keeps the group membership alive; a partition assigned meanwhile is not paused
                    for message in await consumer.consume(num_messages=1, timeout=0):
                        self._start(message)
        finally:
            await consumer.resume(partitions)
            log.info("input resumed", extra={"fields": {"in_flight": len(self._tasks)}})

    async def _measure_lag(self, consumer: AIOConsumer, messages: list[Message]) -> None:
        """Lag of the partitions in this batch, from the cached high watermarks; then the shed level.

        An empty batch after a full poll timeout means the consumer is caught up.
        """
        now = time.time()
        newest: dict[tuple[str, int], Message] = {}
        for message in messages:
            if message.error() is None:
                newest[_position(message)[:2]] = message
        if not messages:
            for key in self._lag:
                self._lag[key] = Lag(0, 0.0)
        for (topic, partition), message in newest.items():
            _, high = await consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            behind = max(0, high - _position(message)[2] - 1) if high >= 0 else 0
            self._lag[(topic, partition)] = Lag(behind, max(0.0, now - message.timestamp()[1] / 1000))
        for (topic, partition), lag in self._lag.items():
            metrics.CONSUMER_LAG.labels(self.stage, topic, str(partition)).set(lag.records)
            metrics.CONSUMER_LAG_SECONDS.labels(self.stage, topic, str(partition)).set(lag.seconds)
        total = self._decision_lag()
        before = self.shedding.level
        floor = self.shedding.update(total, time.monotonic())
        if self.shedding.level != before:
            log.warning(
                "shed level changed",
                extra={
                    "fields": {
                        "shed_level": self.shedding.level,
                        "min_priority": floor,
                        "lag_records": total.records,
                        "lag_seconds": round(total.seconds, 1),
                    }
                },
            )
            metrics.SHED_LEVEL.labels(self.stage).set(self.shedding.level)
            metrics.SHED_MIN_PRIORITY.labels(self.stage).set(float("nan") if floor is None else floor)

    def _total_lag(self) -> Lag:
        """The stage's lag: records behind over all its partitions, seconds behind at the worst one."""
        return Lag(
            sum(lag.records for lag in self._lag.values()),
            max((lag.seconds for lag in self._lag.values()), default=0.0),
        )

    def _decision_lag(self) -> Lag:
        """What shedding goes by: this stage's lag, plus the next stage's when it is watched,
        since a record admitted now waits in both queues."""
        own = self._total_lag()
        if self._downstream is None:
            return own
        down = self._downstream.lag()
        return Lag(own.records + down.records, own.seconds + down.seconds)

    async def _store_positions(self, consumer: AIOConsumer) -> None:
        """Hand librdkafka the positions that moved since last time, in one call."""
        if not self._positions:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
        self._positions.clear()
        try:
            await consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # a partition revoked meanwhile: its new owner re-reads
            log.info("offsets not stored", extra={"fields": {"error": str(exc)}})

    def _start(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            log.warning("consumer error", extra={"fields": {"error": str(error)}})
            return
        topic, partition, offset = _position(message)
        tracker = self._offsets.setdefault((topic, partition), PartitionOffsets())
        tracker.add(offset)
        metrics.RECORDS_CONSUMED.labels(self.stage, topic).inc()
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        self._in_flight.set(len(self._tasks))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.set(len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.error("record task failed", exc_info=task.exception())

    async def _process(self, message: Message) -> None:
        started = time.monotonic()
        record: dict[str, Any] | None = None
        try:
            record = self.codec.decode(message.value())
            if not self.shedding.keep(record["priority"]):
                await self._shed(message, record["priority"])
                await self._complete(message)
                return
            results = await self._handle_with_retries(record)
            outputs = [r for r in results if isinstance(r, Output)]
            await self._deliver(outputs)
            for letter in (r for r in results if isinstance(r, DeadLetter)):
                await self._dead_letter(message, letter.reason, letter.detail, letter.headers)
        except AvroDecodeError as exc:
            await self._dead_letter(message, "bad_avro", str(exc))
        except RecordError as exc:
            await self._dead_letter(message, exc.reason, exc.detail)
        except Exception as exc:
            log.exception("unexpected error on a record", extra={"fields": _where(message)})
            await self._dead_letter(message, "internal_error", f"{type(exc).__name__}: {exc}")
        else:
            metrics.PROCESSING_SECONDS.labels(self.stage).observe(time.monotonic() - started)
            if record is not None:
                latency_s = (now_ms() - record["ingest_ts_ms"]) / 1000
                metrics.END_TO_END_SECONDS.labels(self.stage, str(record["priority"])).observe(latency_s)
        await self._complete(message)

    async def _handle_with_retries(self, record: dict[str, Any]) -> Sequence[Output | DeadLetter]:
        delay = self.retry_initial_s
        while True:
            try:
                return await self.handle(record)
            except RetryableError as exc:
                log.warning(
                    "dependency unavailable, will retry",
                    extra={"fields": {"stage": self.stage, "error": str(exc), "retry_in_s": delay}},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    async def _deliver(self, outputs: Sequence[Output]) -> None:
        futures = [self.producer.produce(o.topic, o.value, key=o.key) for o in outputs]
        # A delivery failure raises here and is retried by librdkafka inside its
        # message timeout; if it still fails the task fails and the offset is never stored.
        for output, future in zip(outputs, futures, strict=True):
            await future
            metrics.RECORDS_PRODUCED.labels(self.stage, output.topic).inc()

    async def _dead_letter(
        self, message: Message, reason: str, detail: str, extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        log.warning("dead letter", extra={"fields": {**_where(message), "reason": reason, "detail": detail}})
        headers: Headers = [(name, value.encode()) for name, value in extra] + [
            ("error", reason.encode()),
            ("error_detail", detail.encode(errors="replace")[:2000]),
            ("stage", self.stage.encode()),
            ("source_topic", str(message.topic()).encode()),
            ("source_partition", str(message.partition()).encode()),
            ("source_offset", str(message.offset()).encode()),
        ]
        key = message.key()
        await self.producer.produce(self.settings.dlq_topic, message.value() or b"", key=key, headers=headers)
        metrics.DEAD_LETTERS.labels(self.stage, reason).inc()

    async def _shed(self, message: Message, priority: int) -> None:
        """Drop a record under load: counted, written to the audit topic if configured, then committed."""
        metrics.SHED.labels(self.stage, str(priority)).inc()
        if not self.settings.shed_audit:
            return
        lag = self._decision_lag()
        headers: Headers = [
            ("reason", b"shed"),
            ("stage", self.stage.encode()),
            ("priority", str(priority).encode()),
            ("min_priority", str(self.shedding.min_priority).encode()),
            ("lag_records", str(lag.records).encode()),
            ("lag_seconds", f"{lag.seconds:.1f}".encode()),
            ("source_topic", str(message.topic()).encode()),
            ("source_partition", str(message.partition()).encode()),
            ("source_offset", str(message.offset()).encode()),
        ]
        await self.producer.produce(
            self.settings.shed_topic, message.value() or b"", key=message.key(), headers=headers
        )

    async def _complete(self, message: Message) -> None:
        topic, partition, offset = _position(message)
        tracker = self._offsets.get((topic, partition))
        if tracker is None:  # revoked meanwhile: the new owner re-reads it
            return
        position = tracker.complete(offset)
        if position is not None:
            self._positions[(topic, partition)] = position

    async def _drain(self, wait_s: float = 30.0) -> None:
        if self._tasks:
            log.info("draining in-flight records", extra={"fields": {"count": len(self._tasks)}})
            _, pending = await asyncio.wait(self._tasks, timeout=wait_s)
            for task in pending:
                task.cancel()

    async def _on_assign(self, _consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        self.assigned = True
        log.info("partitions assigned", extra={"fields": {"partitions": [p.partition for p in partitions]}})

    async def _on_revoke(self, consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        # What finished is stored now, so the commit on revocation includes it.
        finished = [
            TopicPartition(p.topic, p.partition, self._positions.pop((p.topic, p.partition)))
            for p in partitions
            if (p.topic, p.partition) in self._positions
        ]
        if finished:
            await consumer.store_offsets(offsets=finished)
        await self._on_lost(consumer, partitions)

    async def _on_lost(self, _consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._offsets.pop((p.topic, p.partition), None)
            self._positions.pop((p.topic, p.partition), None)
        log.info("partitions revoked", extra={"fields": {"partitions": [p.partition for p in partitions]}})


def _position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed (hence fully positioned) message."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    return topic, partition, offset


def _where(message: Message) -> dict[str, Any]:
    return {"topic": message.topic(), "partition": message.partition(), "offset": message.offset()}


async def run_stream(runtime: Runtime, settings: StreamSettings, codec: Codec, handle: Handler) -> None:
    """Run one StreamLoop with its own producer until `runtime.stop` is set."""
    producer = AsyncProducer(producer_config(settings.kafka, f"tagstream-{runtime.stage}"))
    loop = StreamLoop(stage=runtime.stage, settings=settings, codec=codec, handle=handle, producer=producer)
    runtime.health.add_check(loop.readiness)
    try:
        await loop.run(runtime.stop)
    finally:
        await producer.close()
