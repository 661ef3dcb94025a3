"""The one place Kafka clients are configured and created.

The producer is confluent-kafka's own `Producer` with its delivery reports turned into
asyncio futures (the library's `AIOProducer` cannot send headers, which every record
carries); the consumer is the library's `AIOConsumer`.

A fatal client error (a fenced or unrecoverable idempotent producer, a fenced static group
member) cannot be retried away: the `on_fatal` callback given to the clients ends the process
with a non-zero code, and Kubernetes starts a fresh one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.aio import AIOConsumer

from .settings import KafkaSettings
from .stages import PIPELINE_TOPICS, TopicSpec

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
OnFatal = Callable[[str], None]

#: how often consumers commit the offsets the stream loop stored; a group's lag as read from
#: its commits is up to this much behind its real position (services/common/downstream.py)
AUTO_COMMIT_INTERVAL_S = 1.0


class DeliveryError(RuntimeError):
    """The broker did not take a record."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Outgoing:
    """One record to write: an output, a dead letter or a shed-audit copy."""

    topic: str
    value: bytes
    key: str | bytes | None = None
    headers: Headers = ()
    #: "output", or a copy of the input: "dead_letter", "shed"; only outputs count as produced
    kind: str = "output"


class AsyncProducer:
    """`produce()` returns a future resolved by the broker's delivery report.

    Delivery reports arrive on a polling thread; they are handed to the event loop a poll's
    worth at a time, one wake-up of the loop per poll rather than one per record.
    """

    def __init__(self, config: dict[str, Any], on_fatal: OnFatal | None = None) -> None:
        if on_fatal is not None:
            config = config | {"error_cb": _fatal_reporter(on_fatal)}
        self._producer = Producer(config)
        self._reports: list[_Report] = []
        self._reports_lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)
            self._hand_over()

    def _hand_over(self) -> None:
        """Settle the reports gathered so far, each on its future's own loop."""
        with self._reports_lock:
            reports, self._reports = self._reports, []
        by_loop: dict[asyncio.AbstractEventLoop, list[_Report]] = {}
        for report in reports:
            by_loop.setdefault(report[0].get_loop(), []).append(report)
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits these any more
                loop.call_soon_threadsafe(_settle_all, batch)

    def send(self, record: Outgoing) -> asyncio.Future[Message]:
        return self.produce(record.topic, record.value, key=record.key, headers=record.headers)

    def produce(
        self, topic: str, value: bytes, key: str | bytes | None = None, headers: Headers | None = None
    ) -> asyncio.Future[Message]:
        delivered: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:  # runs inside poll()
            with self._reports_lock:
                self._reports.append((delivered, err, msg))

        wire_headers: list[tuple[str, str | bytes | None]] = list(headers or ())
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=wire_headers, on_delivery=on_delivery)
                return delivered
            except BufferError:
                # The local queue is full (100,000 records or 1 GB: the stages' bounded windows
                # never get near it): let delivery reports drain it, then try again.
                self._producer.poll(0.05)
                self._hand_over()
            except KafkaException as exc:  # refused before sending (too large, unknown partition)
                delivered.set_exception(DeliveryError(exc.args[0]))
                return delivered

    async def flush(self, wait_s: float = 30.0) -> int:
        """Wait for every queued record; return how many are still undelivered."""
        remaining: int = await asyncio.to_thread(self._producer.flush, wait_s)
        self._hand_over()
        return remaining

    async def close(self) -> None:
        remaining = await self.flush()
        if remaining:
            log.error("producer closed with undelivered records", extra={"fields": {"undelivered": remaining}})
        self._stopping.set()
        await asyncio.to_thread(self._poller.join)


class TransactionalProducer(AsyncProducer):
    """An `AsyncProducer` with a `transactional.id`: librdkafka's blocking transaction calls
    run on a thread of the producer's own, so the event loop goes on meanwhile.

    `init_transactions` fences any earlier producer with the same id: its open transaction
    is aborted at once, so read_committed readers are not held up until it times out.

    Each call gets `timeout_s`; one that times out is retriable, and is made again (a broker
    restarting). librdkafka should return by then; it does not always
    (`send_offsets_to_transaction` can wait forever for a group coordinator that went away
    with a broker restart: librdkafka issues 5456 and 5511). A call that has not returned
    `CALL_GRACE_S` after its timeout fails as fatal: the producer is stuck in a state nothing
    can undo, the process ends, and its successor fences it. The thread is a daemon one, so
    the stuck call does not keep the process alive.
    """

    def __init__(self, config: dict[str, Any], on_fatal: OnFatal | None = None, timeout_s: float = 10.0) -> None:
        super().__init__(config, on_fatal)
        self.timeout_s = timeout_s
        self._calls = _CallThread("kafka-transactions")

    async def init_transactions(self) -> None:
        await self._call("init_transactions", self._producer.init_transactions, self.timeout_s)

    async def begin_transaction(self) -> None:
        await self._call("begin_transaction", self._producer.begin_transaction)

    async def send_offsets_to_transaction(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        send = self._producer.send_offsets_to_transaction
        await self._call("send_offsets_to_transaction", send, offsets, group_metadata, self.timeout_s)

    async def commit_transaction(self) -> None:
        await self._call("commit_transaction", self._producer.commit_transaction, self.timeout_s)
        self._hand_over()

    async def abort_transaction(self) -> None:
        await self._call("abort_transaction", self._producer.abort_transaction, self.timeout_s)
        self._hand_over()

    async def close(self) -> None:
        if self._calls.stuck:  # a flush would wait on the stuck transaction: nothing of it can be delivered
            self._stopping.set()
            return
        self._calls.stop()
        await super().close()

    async def _call(self, name: str, function: Callable[..., Any], *args: Any) -> None:
        limit = self.timeout_s + CALL_GRACE_S
        try:
            await self._calls.run(functools.partial(function, *args), limit)
        except TimeoutError:
            reason = f"{name} did not return within {limit:.0f} s: the producer is stuck"
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, reason, fatal=True)) from None


#: how long past its own timeout a transactional call may take before it counts as stuck
CALL_GRACE_S = 10.0


class _CallThread:
    """Blocking calls run one at a time on a daemon thread, each awaited with a time limit.
    A call past its limit is left running (a thread cannot be stopped) and the thread counts
    as stuck: every later call fails at once."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.stuck = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except Exception as exc:  # noqa: BLE001 -- handed to the awaiting task, as asyncio.to_thread does
                future.set_exception(exc)

    async def run(self, call: Callable[[], Any], limit_s: float) -> Any:
        if self.stuck:
            raise TimeoutError("an earlier call is still running")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((call, future))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit_s)
        except TimeoutError:
            self.stuck = True
            raise

    def stop(self) -> None:
        self._queue.put(None)


_Report = tuple["asyncio.Future[Message]", "KafkaError | None", Message]


def _settle_all(reports: list[_Report]) -> None:
    for future, err, msg in reports:
        if future.done():
            continue
        if err is not None:
            future.set_exception(DeliveryError(err))
        else:
            future.set_result(msg)


def _fatal_reporter(on_fatal: OnFatal) -> Callable[[KafkaError], None]:
    """An `error_cb` for librdkafka: fatal errors end the process, the rest are logged."""

    def report(error: KafkaError) -> None:
        if error.fatal():
            log.critical("fatal Kafka client error", extra={"fields": {"error": str(error)}})
            on_fatal(f"fatal Kafka client error: {error}")
        else:  # librdkafka recovers from these by itself (a broker down, a connection reset)
            log.warning("Kafka client error", extra={"fields": {"error": str(error)}})

    return report


def producer_config(
    kafka: KafkaSettings, client_id: str, *, wait_forever: bool = False, **overrides: Any
) -> dict[str, Any]:
    """An idempotent producer. With `wait_forever`, librdkafka retries a record for as long as it
    takes (ingest: a post written again after a timeout could be written twice, since the first
    write may have reached the broker; the bounded number of posts in flight holds the stream)."""
    config = kafka.client_config() | {
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        # How long librdkafka keeps retrying one record before its delivery report says it
        # failed (its default is 300 s). The stream loop then writes it again, with backoff,
        # until it succeeds or the process ends (services/common/delivery.py), so a failure is
        # seen, logged and counted sooner; under at-least-once the record may then be written
        # twice, under exactly-once the transaction holding it is aborted instead.
        "message.timeout.ms": 0 if wait_forever else int(kafka.delivery_timeout_s * 1000),
    }
    return config | overrides


def consumer_config(
    kafka: KafkaSettings,
    group_id: str,
    client_id: str,
    *,
    exactly_once: bool = False,
    instance_id: str | None = None,
    session_timeout_s: float = 45.0,
    **overrides: Any,
) -> dict[str, Any]:
    """A group member's settings. Under exactly-once the offsets go with the transactions;
    otherwise the stream loop stores an offset once the record's outputs are delivered and
    librdkafka commits the stored offsets in the background and on rebalance. With
    `instance_id` the member is static (KIP-345): a restarted one gets its partitions back at
    once, without a rebalance."""
    config = kafka.client_config() | {
        "group.id": group_id,
        "client.id": client_id,
        "auto.offset.reset": "earliest",
        # Records of transactions that were aborted, or are still open, are never seen.
        "isolation.level": "read_committed",
        "enable.auto.commit": not exactly_once,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": int(AUTO_COMMIT_INTERVAL_S * 1000),
        "session.timeout.ms": int(session_timeout_s * 1000),
        # One fetch round trip brings at most this much per partition; librdkafka's 1 MB default
        # is a handful of raw-pixel `images` records (150 KB each), which made the round trip,
        # not the work, the classifier's limit.
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        # When the prefetch queue is full (64 MB by default: about 430 raw-pixel records), the
        # next fetch waits this long; librdkafka's default of a second left a classifier that
        # empties the queue in a fraction of that idle for the rest, at half its rate.
        "fetch.queue.backoff.ms": 20,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    return config | overrides


def transactional_config(kafka: KafkaSettings, client_id: str, transactional_id: str) -> dict[str, Any]:
    """An idempotent producer with a transactional id. A transaction left open by a process
    that died is aborted when its successor (same id) starts, or after this timeout."""
    return producer_config(kafka, client_id) | {
        "transactional.id": transactional_id,
        "transaction.timeout.ms": int(max(60.0, 2 * kafka.delivery_timeout_s) * 1000),
    }


def new_consumer(config: dict[str, Any], on_fatal: OnFatal | None = None) -> AIOConsumer:
    """An asyncio consumer; callbacks in `config` (stats_cb, error_cb) must be coroutines."""
    if on_fatal is not None:
        report = _fatal_reporter(on_fatal)

        async def error_cb(error: KafkaError) -> None:
            report(error)

        config = config | {"error_cb": error_cb}
    return AIOConsumer(config, max_workers=2)


def ensure_topics(
    kafka: KafkaSettings, specs: Sequence[TopicSpec] = PIPELINE_TOPICS, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AdminClient(kafka.client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=-1, config=spec.config)
        for spec in specs
        if spec.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
