"""The consume → process → produce loop every consuming stage runs, wired from its parts.

A stage supplies one coroutine, `handle(record) -> outputs`. The loop reads records, bounds
how many are in flight (pausing its input while the window stays full), asks admission
(services/common/admission.py) whether each is kept or shed, from its envelope headers and
before decoding it, runs the handler with retries while a dependency is down, turns failures
into dead letters (services/common/deadletters.py), and hands what each record produces to
the commit policy (services/common/commits.py), which writes it and decides what may be
committed (services/common/positions.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from confluent_kafka import Message, TopicPartition

from . import metrics
from .admission import Admission, readings
from .avro import Codec
from .commits import AtLeastOnce, Commits, ExactlyOnce
from .deadletters import Source
from .kafka import (
    AsyncProducer,
    TransactionalProducer,
    consumer_config,
    new_consumer,
    producer_config,
    transactional_config,
)
from .positions import PartitionKey, Ticket
from .process import Handler, Processor
from .runtime import Runtime
from .settings import StreamSettings
from .timeutil import now_ms

log = logging.getLogger(__name__)

#: how long records in flight get to finish at shutdown: with the final commit and the producer's
#: flush, well within a pod's 60 s termination grace
DRAIN_S = 20.0


class StreamLoop:
    def __init__(self, processor: Processor, consumer: Any, commits: Commits, pause_after_s: float = 2.0) -> None:
        self.processor, self.consumer, self.commits = processor, consumer, commits
        self.stage, self.settings, self.admission = processor.stage, processor.settings, processor.admission
        self.pause_after_s = pause_after_s
        self._assignment: set[PartitionKey] = set()
        self._tasks: dict[asyncio.Task[None], Ticket] = {}
        # The metric series of every record, looked up once (a lookup costs more than the update).
        self._consumed = metrics.RECORDS_CONSUMED.labels(self.stage, self.settings.input_topic)
        self._in_flight = metrics.IN_FLIGHT.labels(self.stage)
        self._processing = metrics.PROCESSING_SECONDS.labels(self.stage)
        self._end_to_end: dict[int, Any] = {}

    def readiness(self) -> str | None:
        return None if self._assignment else f"{self.stage} has no partitions of {self.settings.input_topic}"

    async def run(self, stop: asyncio.Event) -> None:
        consumer, limit = self.consumer, self.settings.max_in_flight
        await consumer.subscribe(
            [self.settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        watching = asyncio.create_task(self.admission.run(stop))
        poll_s = min(0.5, self.settings.commit_interval_s)
        try:
            await self.commits.start()
            while not stop.is_set() and not self.commits.failed:
                await self.commits.checkpoint(consumer)
                self._cancel_stale()
                if len(self._tasks) >= limit:
                    await self._wait_for_room(stop)
                    continue
                room = min(limit - len(self._tasks), self.settings.consume_batch_size)
                messages = [m for m in await consumer.consume(num_messages=room, timeout=poll_s) if _usable(m)]
                self.admission.observe(await readings(consumer, messages))
                for message in messages:
                    self._start(message)
        finally:
            watching.cancel()
            # A fenced or failed stage stops at once: its successor is already at work.
            await self._drain(wait_s=0 if self.commits.failed else DRAIN_S)
            await self.commits.checkpoint(consumer, final=True)
            await consumer.close()

    async def _drain(self, wait_s: float) -> None:
        """Let the records in flight finish; what is unfinished after `wait_s` is read again by
        the partition's next owner."""
        if not self._tasks:
            return
        log.info("draining in-flight records", extra={"fields": {"count": len(self._tasks)}})
        _, unfinished = await asyncio.wait(self._tasks, timeout=wait_s) if wait_s else (set(), set(self._tasks))
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)

    def _cancel_stale(self) -> None:
        """Stop the records whose partition was revoked, lost or rewound since they were read:
        nothing of them will be written, and their slots are wanted."""
        for task, ticket in list(self._tasks.items()):
            if not self.commits.current(ticket):
                task.cancel()

    async def _wait_for_room(self, stop: asyncio.Event) -> None:
        """A short wait needs nothing more. A long one (a dependency down) pauses the input and
        keeps polling, so the group does not evict this consumer; pausing drops what librdkafka
        had prefetched, which is why it is not done at once."""
        limit = self.settings.max_in_flight
        await asyncio.wait(self._tasks, timeout=self.pause_after_s, return_when=asyncio.FIRST_COMPLETED)
        if len(self._tasks) < limit or stop.is_set():
            return
        await self.consumer.pause(await self.consumer.assignment())
        log.info("input paused: in-flight window full", extra={"fields": {"in_flight": len(self._tasks)}})
        try:
            while len(self._tasks) >= limit and not stop.is_set() and not self.commits.failed:
                await self.commits.checkpoint(self.consumer)
                self._cancel_stale()
                done, _ = await asyncio.wait(self._tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    await self._keep_membership()
        finally:
            await self.consumer.resume(await self.consumer.assignment())
            log.info("input resumed", extra={"fields": {"in_flight": len(self._tasks)}})

    async def _keep_membership(self) -> None:
        """Poll while paused, or the group evicts this consumer. A partition assigned meanwhile is
        paused too, and a record read from it before it was goes back, to be read after the resume."""
        await self.consumer.pause(await self.consumer.assignment())
        for message in await self.consumer.consume(num_messages=1, timeout=0):
            if _usable(message):
                source = Source.of(message)
                await self.consumer.seek(TopicPartition(source.topic, source.partition, source.offset))

    def _start(self, message: Message) -> None:
        source = Source.of(message)
        ticket = self.commits.track(source.topic, source.partition, source.offset)
        self._consumed.inc()
        task = asyncio.create_task(self._process(message, ticket))
        self._tasks[task] = ticket
        self._in_flight.set(len(self._tasks))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._in_flight.set(len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.error("record task failed", exc_info=task.exception())

    async def _process(self, message: Message, ticket: Ticket) -> None:
        started = time.monotonic()
        outcome = await self.processor.outcome(message)
        await self.commits.complete(ticket, outcome.records, partial(self.processor.substitute, message))
        self._processing.observe(time.monotonic() - started)
        envelope = outcome.envelope
        if envelope is not None:
            series = self._end_to_end.get(envelope.priority)
            if series is None:
                series = self._end_to_end[envelope.priority] = metrics.END_TO_END_SECONDS.labels(
                    self.stage, str(envelope.priority)
                )
            series.observe((now_ms() - envelope.ingest_ts_ms) / 1000)

    async def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assignment |= _keys(partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": [p.partition for p in partitions]}})

    async def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        await self._taken_away(partitions, partial(self.commits.revoked, consumer))
        log.info("partitions revoked", extra={"fields": {"partitions": [p.partition for p in partitions]}})

    async def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        await self._taken_away(partitions, partial(self.commits.lost, consumer))
        log.warning("partitions lost", extra={"fields": {"partitions": [p.partition for p in partitions]}})

    async def _taken_away(
        self, partitions: list[TopicPartition], settle: Callable[[set[PartitionKey]], Awaitable[None]]
    ) -> None:
        """No longer ours: out of the assignment, settled by the commit policy, forgotten by admission."""
        keys = _keys(partitions)
        self._assignment -= keys
        await settle(keys)
        self.admission.forget(keys)


def _keys(partitions: list[TopicPartition]) -> set[PartitionKey]:
    return {(p.topic, p.partition) for p in partitions}


def _usable(message: Message) -> bool:
    error = message.error()
    if error is not None:
        log.warning("consumer error", extra={"fields": {"error": str(error)}})
    return error is None


async def run_stream(rt: Runtime, settings: StreamSettings, codec: Codec, handle: Handler) -> None:
    """Run the stage's loop, with its own Kafka clients, until `rt.stop` is set."""
    client_id = f"tagstream-{rt.stage}"
    commits: Commits
    if settings.exactly_once:
        config = transactional_config(settings.kafka, client_id, settings.transactional_id)
        transactional = TransactionalProducer(config, on_fatal=rt.fail)
        producer: AsyncProducer = transactional
        commits = ExactlyOnce(transactional, rt.stage, rt.fail, settings.commit_interval_s)
    else:
        producer = AsyncProducer(producer_config(settings.kafka, client_id), on_fatal=rt.fail)
        commits = AtLeastOnce(producer, rt.stage)
    member = consumer_config(
        settings.kafka,
        settings.group_id,
        client_id,
        exactly_once=settings.exactly_once,
        instance_id=settings.instance_id if settings.static_membership else None,
        session_timeout_s=settings.session_timeout_s,
    )
    consumer = new_consumer(member, on_fatal=rt.fail)
    processor = Processor(rt.stage, settings, codec, handle, Admission.for_stage(rt.stage, settings))
    loop = StreamLoop(processor, consumer, commits)
    rt.health.add_check(loop.readiness)
    fields = {"topic": settings.input_topic, "group": settings.group_id, "guarantee": settings.processing_guarantee}
    log.info("consuming", extra={"fields": fields})
    try:
        await loop.run(rt.stop)
    finally:
        await producer.close()
