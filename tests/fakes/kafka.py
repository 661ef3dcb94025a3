"""An in-memory broker, consumer and producer with the calls the stream loop makes, so the
loop's logic is tested without Kafka. The integration tests run the same loop on a real broker.

The consumer behaves as librdkafka's does where the loop depends on it: rebalance callbacks run
inside `consume`, a paused partition returns nothing, a revoked partition's next owner starts
from the committed offset, and offsets can only be stored for assigned partitions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.common.kafka import DeliveryError, Outgoing

TP = tuple[str, int]
Callback = Callable[[Any, list[TopicPartition]], Awaitable[None]]


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: str | bytes | None = None
    _headers: list[tuple[str, bytes]] | None = None
    _timestamp_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: a transaction's end marker: it takes an offset, a read_committed reader never gets it
    _marker: bool = False

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> str | bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)

    def error(self) -> None:
        return None


class FakeBroker:
    def __init__(self) -> None:
        self.logs: dict[TP, list[FakeMessage]] = {}

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int = 0,
        key: str | bytes | None = None,
        headers: Iterable[tuple[str, bytes]] | None = None,
    ) -> FakeMessage:
        log = self.logs.setdefault((topic, partition), [])
        message = FakeMessage(topic, partition, len(log), value, key, list(headers) if headers is not None else None)
        log.append(message)
        return message

    def mark(self, topic: str, partition: int = 0) -> None:
        """A transaction's end marker, as a transactional writer leaves after its records."""
        log = self.logs.setdefault((topic, partition), [])
        log.append(FakeMessage(topic, partition, len(log), None, _marker=True))

    def records(self, topic: str) -> list[FakeMessage]:
        return [m for (t, _), log in sorted(self.logs.items()) if t == topic for m in log if not m._marker]


class FakeConsumer:
    """One member of a group over `partitions` of the broker; tests move partitions with
    `revoke`, `assign` and `lose`, which take effect inside the next `consume`."""

    def __init__(self, broker: FakeBroker, partitions: Iterable[TP]) -> None:
        self.broker = broker
        self.committed_offsets: dict[TP, int] = {}
        self.stored: dict[TP, int] = {}
        self.positions: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.pause_calls = 0
        self.resume_calls = 0
        self.seeks: list[tuple[TP, int]] = []
        #: errors the next calls to `committed` raise, in order (a coordinator moving)
        self.committed_errors: list[KafkaError] = []
        self.closed = False
        self._events: list[tuple[str, list[TP]]] = [("assign", list(partitions))]
        self._callbacks: dict[str, Callback] = {}

    # --- what the stream loop calls -------------------------------------------------------
    async def subscribe(self, topics: list[str], **callbacks: Callback) -> None:
        self._callbacks = callbacks

    async def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:  # noqa: ASYNC109
        await self._rebalance()
        out: list[FakeMessage] = []
        for tp in sorted(self.positions):
            if tp in self.paused:
                continue
            log = self.broker.logs.get(tp, [])
            while self.positions[tp] < len(log) and len(out) < num_messages:
                if not log[self.positions[tp]]._marker:
                    out.append(log[self.positions[tp]])
                self.positions[tp] += 1
        if not out:
            await asyncio.sleep(min(max(timeout, 0), 0.01))
        return out

    async def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.positions)]

    async def pause(self, partitions: list[TopicPartition]) -> None:
        self.pause_calls += 1
        self.paused |= {(p.topic, p.partition) for p in partitions}

    async def resume(self, partitions: list[TopicPartition]) -> None:
        self.resume_calls += 1
        self.paused -= {(p.topic, p.partition) for p in partitions}

    async def get_watermark_offsets(self, partition: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.broker.logs.get((partition.topic, partition.partition), []))

    async def store_offsets(self, offsets: list[TopicPartition]) -> None:
        for p in offsets:
            tp = (p.topic, p.partition)
            if tp not in self.positions:
                raise KafkaException(KafkaError(KafkaError._STATE, f"{tp} is not assigned"))
            self.stored[tp] = p.offset

    async def close(self) -> None:
        self.committed_offsets.update(self.stored)
        self.closed = True

    async def consumer_group_metadata(self) -> FakeConsumer:
        return self  # what a transaction commits offsets for

    async def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:  # noqa: ASYNC109
        if self.committed_errors:
            raise KafkaException(self.committed_errors.pop(0))
        return [
            TopicPartition(p.topic, p.partition, self.committed_offsets.get((p.topic, p.partition), -1001))
            for p in partitions
        ]

    async def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where reading goes on: past what was returned, and past offsets that are no records."""
        out = []
        for p in partitions:
            tp = (p.topic, p.partition)
            at = self.positions.get(tp, -1001)
            log = self.broker.logs.get(tp, [])
            while 0 <= at < len(log) and log[at]._marker:  # never returned as a record
                at += 1
            out.append(TopicPartition(p.topic, p.partition, at))
        return out

    async def seek(self, partition: TopicPartition) -> None:
        tp = (partition.topic, partition.partition)
        self.positions[tp] = max(partition.offset, 0)  # OFFSET_BEGINNING (-2) is the start
        self.seeks.append((tp, partition.offset))

    # --- what a test does -----------------------------------------------------------------
    def revoke(self, partitions: Iterable[TP]) -> None:
        self._events.append(("revoke", list(partitions)))

    def assign(self, partitions: Iterable[TP]) -> None:
        self._events.append(("assign", list(partitions)))

    def lose(self, partitions: Iterable[TP]) -> None:
        self._events.append(("lose", list(partitions)))

    def commit_stored(self) -> None:
        """What librdkafka's auto-commit does every interval."""
        self.committed_offsets.update(self.stored)

    async def _rebalance(self) -> None:
        while self._events:
            kind, tps = self._events.pop(0)
            partitions = [TopicPartition(t, p) for t, p in tps]
            if kind == "assign":
                for tp in tps:
                    self.positions[tp] = self.committed_offsets.get(tp, 0)
                await self._call("on_assign", partitions)
                continue
            await self._call("on_revoke" if kind == "revoke" else "on_lost", partitions)
            if kind == "revoke":  # the commit a revocation makes
                self.committed_offsets.update({tp: o for tp, o in self.stored.items() if tp in tps})
            for tp in tps:
                self.positions.pop(tp, None)
                self.stored.pop(tp, None)
                self.paused.discard(tp)

    async def _call(self, name: str, partitions: list[TopicPartition]) -> None:
        callback = self._callbacks.get(name)
        if callback is not None:
            await callback(self, partitions)


class FakeProducer:
    """Writes to the broker; `failures[topic]` delivery failures come first for that topic."""

    def __init__(self, broker: FakeBroker, failures: dict[str, list[int]] | None = None) -> None:
        self.broker = broker
        #: per topic, the error codes of the next deliveries that fail, in order
        self.failures = failures or {}
        self.attempts: list[Outgoing] = []

    def send(self, record: Outgoing) -> asyncio.Future[Any]:
        self.attempts.append(record)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self.failures.get(record.topic)
        if pending:
            future.set_exception(DeliveryError(KafkaError(pending.pop(0))))
        else:
            future.set_result(self.broker.append(record.topic, record.value, key=record.key, headers=record.headers))
        return future


@dataclass
class Transaction:
    records: list[Outgoing] = field(default_factory=list)
    offsets: dict[TP, int] = field(default_factory=dict)
    outcome: str = "open"


class FakeTransactionalProducer(FakeProducer):
    """Records go to the broker only when their transaction commits, with its offsets, as a
    read_committed reader sees them; `commit_errors` are raised by the next commits, in order."""

    def __init__(self, broker: FakeBroker, commit_errors: list[KafkaError] | None = None) -> None:
        super().__init__(broker)
        self.commit_errors = commit_errors or []
        self.transactions: list[Transaction] = []
        self.initialised = False

    @property
    def current(self) -> Transaction:
        assert self.transactions, "no transaction begun"
        assert self.transactions[-1].outcome == "open", "no transaction open"
        return self.transactions[-1]

    async def init_transactions(self) -> None:
        self.initialised = True

    async def begin_transaction(self) -> None:
        assert self.initialised
        assert not self.transactions or self.transactions[-1].outcome != "open", "a transaction is already open"
        self.transactions.append(Transaction())

    def send(self, record: Outgoing) -> asyncio.Future[Any]:
        self.attempts.append(record)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self.failures.get(record.topic)
        if pending:
            future.set_exception(DeliveryError(KafkaError(pending.pop(0))))
            return future
        self.current.records.append(record)
        future.set_result(None)
        return future

    async def send_offsets_to_transaction(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        self.current.offsets.update({(p.topic, p.partition): p.offset for p in offsets})
        self._consumer = group_metadata

    async def commit_transaction(self) -> None:
        await asyncio.sleep(0)
        transaction = self.current
        if self.commit_errors:
            error = self.commit_errors.pop(0)
            if error.txn_requires_abort():
                transaction.outcome = "failed"
            raise KafkaException(error)
        transaction.outcome = "committed"
        for record in transaction.records:
            self.broker.append(record.topic, record.value, key=record.key, headers=record.headers)
        if transaction.offsets:
            self._consumer.committed_offsets.update(transaction.offsets)

    async def abort_transaction(self) -> None:
        self.transactions[-1].outcome = "aborted"
