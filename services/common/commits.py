"""When a stage's outputs are written and its input offsets committed: the delivery guarantee.

`AtLeastOnce` writes a record's outputs (retrying until the broker has them) and only then
lets its offset be committed: a crash in between processes the record again, so a reader
may see an output twice. librdkafka commits the stored offsets in the background.

`ExactlyOnce` writes inside Kafka transactions. A record's outputs (dead letters and shed
copies included) are released in offset order, as the partition's position moves past them,
and written into the open transaction; every commit interval the transaction commits together
with the positions of exactly those records (`send_offsets_to_transaction`), so a transaction
holds the outputs of the offsets it commits and no others. A failed transaction is aborted and
the input rewound to the committed positions, so its records are processed again and nothing
of the failed attempt is ever visible to a read_committed reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from . import metrics
from .delivery import DEFAULT_BACKOFF, Backoff, Producer, Replace, deliver, refused
from .kafka import DeliveryError, OnFatal, Outgoing
from .positions import Positions, Ticket
from .positions import TopicPartition as TP

log = logging.getLogger(__name__)


class Commits(Protocol):
    positions: Positions[Any]

    async def start(self) -> None:
        """Before the first record."""

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        """The record of `ticket` is done and `records` are what it produces."""

    async def checkpoint(self, consumer: Any, final: bool = False) -> None:
        """Commit what may be committed; called every turn of the loop, and at the end."""

    async def revoked(self, consumer: Any, partitions: Iterable[TP]) -> None:
        """`partitions` are being taken away: commit what they finished, forget the rest."""

    async def lost(self, consumer: Any, partitions: Iterable[TP]) -> None:
        """`partitions` were taken away without notice: commit nothing of them."""


class AtLeastOnce:
    def __init__(self, producer: Producer, stage: str, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.producer = producer
        self.stage = stage
        self.backoff = backoff
        self.positions: Positions[None] = Positions()

    async def start(self) -> None:
        pass

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        await deliver(self.producer, records, self.stage, replace, self.backoff)
        self.positions.complete(ticket)

    async def checkpoint(self, consumer: Any, final: bool = False) -> None:
        """Hand librdkafka the positions that moved since last time, in one call."""
        moved = self.positions.take()
        if not moved:
            return
        try:
            await consumer.store_offsets(offsets=_offsets(moved))
        except KafkaException as exc:  # a partition revoked meanwhile: its new owner re-reads
            log.info("offsets not stored", extra={"fields": {"error": str(exc)}})

    async def revoked(self, consumer: Any, partitions: Iterable[TP]) -> None:
        # What finished is stored now, so the commit on revocation includes it.
        final = self.positions.revoke(partitions)
        if final:
            await consumer.store_offsets(offsets=_offsets(final))

    async def lost(self, consumer: Any, partitions: Iterable[TP]) -> None:
        self.positions.revoke(partitions)


class Transactional(Producer, Protocol):
    async def init_transactions(self) -> None: ...
    async def begin_transaction(self) -> None: ...
    async def send_offsets_to_transaction(self, offsets: list[TopicPartition], group_metadata: Any) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...


@dataclass(frozen=True)
class _Released:
    records: Sequence[Outgoing]
    replace: Replace


class ExactlyOnce:
    def __init__(
        self,
        producer: Transactional,
        stage: str,
        on_fatal: OnFatal,
        commit_interval_s: float = 0.1,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.producer = producer
        self.stage = stage
        self.on_fatal = on_fatal
        self.commit_interval_s = commit_interval_s
        self.backoff = backoff
        self.commit_timeout_s = 10.0
        self.positions: Positions[_Released] = Positions()
        self._open = False  # a transaction is open and taking records
        self._waiting: list[_Released] = []  # released while a commit ran: for the next transaction
        self._lock = asyncio.Lock()  # one commit or abort at a time
        self._produced: Counter[str] = Counter()  # outputs in the open transaction, by topic
        self._last_commit = time.monotonic()
        self._failed = False

    async def start(self) -> None:
        await self.producer.init_transactions()
        await self._begin()

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        for released in self.positions.complete(ticket, _Released(records, replace)) or ():
            self._write(released)

    async def checkpoint(self, consumer: Any, final: bool = False) -> None:
        if not final and time.monotonic() - self._last_commit < self.commit_interval_s:
            return
        async with self._lock:
            await self._commit(consumer, self.positions.take(), begin=not final)

    async def revoked(self, consumer: Any, partitions: Iterable[TP]) -> None:
        async with self._lock:
            # Dropped first: a record of theirs finishing during the commit is not released.
            final = self.positions.revoke(partitions)
            await self._commit(consumer, self.positions.take() | final, begin=True)

    async def lost(self, consumer: Any, partitions: Iterable[TP]) -> None:
        # The open transaction may hold outputs of the lost partitions, whose offsets are no
        # longer ours to commit: it is aborted, and the partitions still ours read again.
        lost = set(partitions)
        async with self._lock:
            self.positions.revoke(lost)
            await self._abort_and_rewind(consumer, "partitions lost", keep_out=lost)
            await self._begin()

    def _write(self, released: _Released) -> None:
        if not self._open:
            self._waiting.append(released)
            return
        for record in released.records:
            future = self.producer.send(record)
            if future.done() and isinstance(future.exception(), DeliveryError):
                error = future.exception()
                assert isinstance(error, DeliveryError)
                if refused(error):  # refused before it was sent: the transaction is unharmed
                    substitute = released.replace(record, error)
                    log.warning("record refused, writing a substitute", extra={"fields": {"error": str(error)}})
                    future = self.producer.send(substitute)
            if record.kind == "output":
                self._produced[record.topic] += 1

    async def _commit(self, consumer: Any, offsets: dict[TP, int], begin: bool) -> None:
        """Commit the open transaction with `offsets`; on failure abort and rewind. Then, unless
        this is the last one, open the next transaction."""
        self._last_commit = time.monotonic()
        if self._failed or not self._open:
            return
        if offsets:
            self._open = False
            started = time.monotonic()
            try:
                await self._commit_retrying(consumer, offsets)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    self._fail(error)
                    return
                await self._abort_and_rewind(consumer, str(error))
            else:
                metrics.TRANSACTIONS.labels(self.stage, "committed").inc()
                metrics.TRANSACTION_SECONDS.labels(self.stage).observe(time.monotonic() - started)
                for topic, count in self._produced.items():
                    metrics.RECORDS_PRODUCED.labels(self.stage, topic).inc(count)
            self._produced.clear()
            if begin:
                await self._begin()

    async def _commit_retrying(self, consumer: Any, offsets: dict[TP, int]) -> None:
        metadata = await consumer.consumer_group_metadata()
        await self._retrying(lambda: self.producer.send_offsets_to_transaction(_offsets(offsets), metadata))
        await self._retrying(self.producer.commit_transaction)

    async def _retrying(self, call: Any) -> None:
        """librdkafka asks for a retriable transactional call to be made again."""
        attempt = 0
        while True:
            try:
                await call()
                return
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "transaction call failed, retrying", extra={"fields": {"error": str(exc), "retry_in_s": delay}}
                )
                await asyncio.sleep(delay)

    async def _abort_and_rewind(self, consumer: Any, why: str, keep_out: set[TP] | None = None) -> None:
        """Abort the open transaction and read every partition (but `keep_out`) again from its
        committed position."""
        log.warning("transaction aborted, input rewound", extra={"fields": {"stage": self.stage, "why": why[:500]}})
        metrics.TRANSACTIONS.labels(self.stage, "aborted").inc()
        self._open = False
        self._waiting.clear()
        self._produced.clear()
        self.positions.reset()
        try:
            await self._retrying(self.producer.abort_transaction)
        except KafkaException as exc:  # not retriable: the producer is in no state to go on
            self._fail(exc.args[0])
            return
        partitions = [p for p in await consumer.assignment() if (p.topic, p.partition) not in (keep_out or set())]
        if partitions:
            await self._rewind(consumer, partitions)

    async def _rewind(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Seek `partitions` to their committed positions; the group coordinator may be moving
        (a broker restarting), so asking is retried until it answers."""
        attempt = 0
        while True:
            try:
                committed = await consumer.committed(partitions, timeout=self.commit_timeout_s)
                break
            except KafkaException as exc:
                delay = self.backoff.delay(attempt)
                attempt += 1
                fields = {"error": str(exc), "retry_in_s": delay}
                log.warning("committed positions unknown, asking again", extra={"fields": fields})
                await asyncio.sleep(delay)
        for position in committed:
            offset = position.offset if position.offset >= 0 else OFFSET_BEGINNING
            try:
                await consumer.seek(TopicPartition(position.topic, position.partition, offset))
            except KafkaException as exc:  # taken away meanwhile: its next owner reads it
                log.info("not rewound", extra={"fields": {"partition": position.partition, "error": str(exc)}})

    async def _begin(self) -> None:
        if self._failed:
            return
        try:
            await self.producer.begin_transaction()
        except KafkaException as exc:
            self._fail(exc.args[0])
            return
        self._open = True
        waiting, self._waiting = self._waiting, []
        for released in waiting:
            self._write(released)

    def _fail(self, error: KafkaError) -> None:
        self._failed = True
        self._open = False
        self.on_fatal(f"transactional producer: {error}")


def _offsets(positions: dict[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
