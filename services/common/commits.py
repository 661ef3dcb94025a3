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

Both track the records in flight (`services/common/positions.py`); the loop asks them, not
the positions, what a record's ticket is and whether it still counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from . import metrics
from .delivery import DEFAULT_BACKOFF, Backoff, Producer, Replace, deliver, send
from .kafka import OnFatal, Outgoing
from .positions import PartitionKey, Positions, Ticket

log = logging.getLogger(__name__)

T = TypeVar("T")


class Commits(Protocol):
    @property
    def failed(self) -> bool:
        """Nothing more can be committed: the process is ending."""

    def track(self, topic: str, partition: int, offset: int) -> Ticket:
        """A record was read."""

    def current(self, ticket: Ticket) -> bool:
        """The record still counts: its partition was not revoked, lost or rewound since."""

    async def start(self) -> None:
        """Before the first record."""

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        """The record of `ticket` is done and `records` are what it produces."""

    async def checkpoint(self, consumer: Any, final: bool = False) -> None:
        """Commit what may be committed; called every turn of the loop, and at the end."""

    async def revoked(self, consumer: Any, partitions: Iterable[PartitionKey]) -> None:
        """`partitions` are being taken away: commit what they finished, forget the rest."""

    async def lost(self, consumer: Any, partitions: Iterable[PartitionKey]) -> None:
        """`partitions` were taken away without notice: commit nothing of them."""


#: how often the positions of partitions with nothing in flight are moved to the consumer's
SKIP_AHEAD_EVERY_S = 1.0
#: how long one ask for the committed positions may take, and how long they are asked for
#: before the process gives up (the group coordinator moving while a broker restarts)
LOOKUP_TIMEOUT_S = 10.0
REWIND_TIMEOUT_S = 60.0


class _InFlight:
    """What both policies share: the records in flight (`positions`), and partitions with
    nothing in flight committing the consumer's own position, which is past the offsets that
    never come as records (Positions.skip_to); asked of the consumer once a second."""

    positions: Positions[Any]
    _skipped_at = 0.0

    def track(self, topic: str, partition: int, offset: int) -> Ticket:
        return self.positions.track(topic, partition, offset)

    def current(self, ticket: Ticket) -> bool:
        return self.positions.current(ticket)

    async def skip_ahead(self, consumer: Any) -> None:
        if time.monotonic() - self._skipped_at < SKIP_AHEAD_EVERY_S:
            return
        self._skipped_at = time.monotonic()
        assignment = await consumer.assignment()
        if not assignment:
            return
        for position in await consumer.position(assignment):
            if position.offset >= 0:
                self.positions.skip_to((position.topic, position.partition), position.offset)


class AtLeastOnce(_InFlight):
    def __init__(self, producer: Producer, stage: str, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.producer = producer
        self.stage = stage
        self.backoff = backoff
        self.positions: Positions[None] = Positions()
        self.failed = False  # a write is retried until it succeeds: nothing here ends the process

    async def start(self) -> None:
        pass

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        await deliver(self.producer, records, self.stage, replace, self.backoff)
        self.positions.complete(ticket)

    async def checkpoint(self, consumer: Any, final: bool = False) -> None:
        """Hand librdkafka the positions that moved since last time, in one call."""
        await self.skip_ahead(consumer)
        moved = self.positions.take()
        if not moved:
            return
        try:
            await consumer.store_offsets(offsets=_offsets(moved))
        except KafkaException as exc:  # a partition no longer assigned: its next owner reads on from its last commit
            log.info("offsets not stored", extra={"fields": {"error": str(exc)}})

    async def revoked(self, consumer: Any, partitions: Iterable[PartitionKey]) -> None:
        # What finished is stored now, so the commit on revocation includes it.
        final = self.positions.revoke(partitions)
        if final:
            await consumer.store_offsets(offsets=_offsets(final))

    async def lost(self, consumer: Any, partitions: Iterable[PartitionKey]) -> None:
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


class ExactlyOnce(_InFlight):
    """Transactions over the loop. Every call comes from the loop's own task (`checkpoint`), or
    from a rebalance callback while that task waits inside `consume`, so commits, aborts and
    rewinds never overlap; records finishing meanwhile (`complete`, from the record tasks) never
    write into a transaction that is being committed: they wait for the next one."""

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
        self.positions: Positions[_Released] = Positions()
        self.failed = False
        self._open = False  # a transaction is open and taking records
        self._doomed = False  # a write of the open transaction failed: it must be aborted
        self._waiting: list[_Released] = []  # released while a commit ran: for the next transaction
        self._produced: Counter[str] = Counter()  # outputs in the open transaction, by topic
        self._last_commit = time.monotonic()
        self._aborts_in_a_row = 0

    async def start(self) -> None:
        """Fence any earlier producer with this transactional id, then open a transaction."""
        try:
            await self._retrying(self.producer.init_transactions)
        except KafkaException as exc:
            self._fail(exc.args[0])
            return
        await self._begin()

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        for released in self.positions.complete(ticket, _Released(records, replace)) or ():
            self._write(released)

    async def checkpoint(self, consumer: Any, final: bool = False) -> None:
        if not final and time.monotonic() - self._last_commit < self.commit_interval_s:
            return
        if not self.failed:
            await self.skip_ahead(consumer)
        await self._commit(consumer, self.positions.take(), begin=not final)

    async def revoked(self, consumer: Any, partitions: Iterable[PartitionKey]) -> None:
        # Dropped first: a record of theirs finishing during the commit is not released.
        final = self.positions.revoke(partitions)
        await self._commit(consumer, self.positions.take() | final, begin=True)

    async def lost(self, consumer: Any, partitions: Iterable[PartitionKey]) -> None:
        # The open transaction may hold outputs of the lost partitions, whose offsets are no
        # longer ours to commit: it is aborted, and the partitions still ours read again.
        lost = set(partitions)
        self.positions.revoke(lost)
        if await self._abort(f"partitions lost: {sorted(lost)}"):
            await self._rewind(consumer, keep_out=lost)
            await self._begin()

    def _write(self, released: _Released) -> None:
        if not self._open:
            self._waiting.append(released)
            return
        for record in released.records:
            sent = send(self.producer, record, released.replace)
            sent.future.add_done_callback(_retrieved)
            if sent.future.done() and sent.future.exception() is not None:
                # Written neither it nor a substitute (a topic missing or not allowed): this
                # transaction must not commit the offset of its record.
                log.warning("write failed in a transaction", extra={"fields": {"error": str(sent.future.exception())}})
                self._doomed = True
            elif sent.record.kind == "output":
                self._produced[sent.record.topic] += 1

    async def _commit(self, consumer: Any, offsets: dict[PartitionKey, int], begin: bool) -> None:
        """Commit the open transaction with `offsets`; on failure abort it and, unless this is
        the last one, rewind. Then, unless this is the last one, open the next transaction."""
        self._last_commit = time.monotonic()
        if self.failed or not self._open or not offsets:
            return
        self._open = False
        started = time.monotonic()
        try:
            if self._doomed:
                raise KafkaException(KafkaError(KafkaError._STATE, "a write failed", txn_requires_abort=True))
            metadata = await consumer.consumer_group_metadata()
            await self._retrying(lambda: self.producer.send_offsets_to_transaction(_offsets(offsets), metadata))
            await self._retrying(self.producer.commit_transaction)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                self._fail(error)
                return
            if not await self._abort(str(error)):
                return
            if begin:
                await self._rewind(consumer)
        else:
            self._aborts_in_a_row = 0
            metrics.TRANSACTIONS.labels(self.stage, "committed").inc()
            metrics.TRANSACTION_SECONDS.labels(self.stage).observe(time.monotonic() - started)
            for topic, count in self._produced.items():
                metrics.RECORDS_PRODUCED.labels(self.stage, topic).inc(count)
        self._produced.clear()
        if begin:
            await self._begin()

    async def _abort(self, why: str) -> bool:
        """Abort the open transaction and forget every record in flight; False when the producer
        cannot go on (the process ends)."""
        log.warning("transaction aborted, input rewound", extra={"fields": {"stage": self.stage, "why": why[:500]}})
        metrics.TRANSACTIONS.labels(self.stage, "aborted").inc()
        self._open = self._doomed = False
        self._waiting.clear()
        self._produced.clear()
        self.positions.reset()
        try:
            await self._retrying(self.producer.abort_transaction)
        except KafkaException as exc:  # not retriable: the producer is in no state to go on
            self._fail(exc.args[0])
            return False
        # The same failure again at once (a topic missing) would spin: each abort in a row waits longer.
        await asyncio.sleep(self.backoff.delay(self._aborts_in_a_row) if self._aborts_in_a_row else 0)
        self._aborts_in_a_row += 1
        return True

    async def _rewind(self, consumer: Any, keep_out: AbstractSet[PartitionKey] = frozenset()) -> None:
        """Seek every assigned partition (but `keep_out`) to its committed position. The group
        coordinator may be moving (a broker restarting), so asking is retried; if it cannot be
        asked for `REWIND_TIMEOUT_S`, reading on from the wrong positions is not an option: the
        process ends."""
        partitions = [p for p in await consumer.assignment() if (p.topic, p.partition) not in keep_out]
        if not partitions:
            return
        deadline = time.monotonic() + REWIND_TIMEOUT_S
        try:
            committed: list[TopicPartition] = await self._retrying(
                lambda: consumer.committed(partitions, timeout=LOOKUP_TIMEOUT_S),
                gives_up=lambda _: time.monotonic() > deadline,
                message="committed positions unknown, asking again",
            )
        except KafkaException as exc:
            self._fail(exc.args[0])
            return
        for position in committed:
            offset = position.offset if position.offset >= 0 else OFFSET_BEGINNING
            try:
                await consumer.seek(TopicPartition(position.topic, position.partition, offset))
            except KafkaException as exc:  # no longer fetched (revoked meanwhile): its next owner reads it
                log.info("not rewound", extra={"fields": {"partition": position.partition, "error": str(exc)}})

    async def _begin(self) -> None:
        if self.failed:
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

    async def _retrying(
        self,
        call: Callable[[], Awaitable[T]],
        gives_up: Callable[[KafkaException], bool] = lambda exc: not exc.args[0].retriable(),
        message: str = "transaction call failed, retrying",
    ) -> T:
        """`call()` made again, with backoff, until it succeeds or its failure `gives_up`
        (by default: librdkafka asks for a retriable transactional call to be made again)."""
        attempt = 0
        while True:
            try:
                return await call()
            except KafkaException as exc:
                if gives_up(exc):
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                fields = {"error": str(exc), "retry_in_s": delay}
                log.warning(message, extra={"fields": fields})
                await asyncio.sleep(delay)

    def _fail(self, error: KafkaError) -> None:
        self.failed = True
        self._open = False
        self.on_fatal(f"transactional producer: {error}")


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A transaction's write fails with the transaction, which says so: the write's own failure
    is read here only so that asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _offsets(positions: dict[PartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
