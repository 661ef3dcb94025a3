"""The one place Kafka clients are configured and created.

The producer is confluent-kafka's own `Producer` with its delivery reports turned into
asyncio futures (the library's `AIOProducer` cannot send headers, which dead letters need);
the consumer is the library's `AIOConsumer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.aio import AIOConsumer

from .settings import KafkaSettings

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

#: how often consumers commit the offsets the stream loop stored; a group's lag as read from
#: its commits is up to this much behind its real position (services/common/downstream.py)
AUTO_COMMIT_INTERVAL_S = 1.0


class DeliveryError(RuntimeError):
    """The broker did not take a record."""


class AsyncProducer:
    """`produce()` returns a future resolved by the broker's delivery report.

    Delivery reports arrive on a polling thread; they are handed to the event loop a poll's
    worth at a time, one wake-up of the loop per poll rather than one per record.
    """

    def __init__(self, config: dict[str, Any]) -> None:
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
                # The local queue is full: let delivery reports drain it, then try again.
                self._producer.poll(0.05)
                self._hand_over()

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


_Report = tuple["asyncio.Future[Message]", "KafkaError | None", Message]


def _settle_all(reports: list[_Report]) -> None:
    for future, err, msg in reports:
        if future.done():
            continue
        if err is not None:
            future.set_exception(DeliveryError(str(err)))
        else:
            future.set_result(msg)


def producer_config(kafka: KafkaSettings, client_id: str, **overrides: Any) -> dict[str, Any]:
    config = kafka.client_config() | {
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    return config | overrides


def consumer_config(
    kafka: KafkaSettings,
    group_id: str,
    client_id: str,
    **overrides: Any,
) -> dict[str, Any]:
    config = kafka.client_config() | {
        "group.id": group_id,
        "client.id": client_id,
        "auto.offset.reset": "earliest",
        # Offsets are stored by the stream loop only once a record's outputs are delivered;
        # librdkafka then commits the stored offsets in the background and on rebalance.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": int(AUTO_COMMIT_INTERVAL_S * 1000),
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
    return config | overrides


def new_consumer(config: dict[str, Any]) -> AIOConsumer:
    """An asyncio consumer; callbacks in `config` (stats_cb, error_cb) must be coroutines."""
    return AIOConsumer(config, max_workers=2)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 3
    config: dict[str, str] = field(default_factory=dict)


DAY_MS = 24 * 3600 * 1000

# The topics of the pipeline: one place, read by `ensure_topics` and the deployment tests.
# `<input>.dlq` holds dead letters, `<input>.shed` the audit trail of records shed under load.
PIPELINE_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("tweets", 3, {"retention.ms": str(7 * DAY_MS)}),
    TopicSpec("tweets.dlq", 1, {"retention.ms": str(14 * DAY_MS)}),
    TopicSpec("tweets.shed", 1, {"retention.ms": str(3 * DAY_MS)}),
    TopicSpec("images", 3, {"retention.ms": str(DAY_MS), "max.message.bytes": str(2 * 1024 * 1024)}),
    TopicSpec("images.dlq", 1, {"retention.ms": str(14 * DAY_MS), "max.message.bytes": str(2 * 1024 * 1024)}),
    TopicSpec("images.shed", 1, {"retention.ms": str(3 * DAY_MS), "max.message.bytes": str(2 * 1024 * 1024)}),
    TopicSpec("predictions", 3, {"retention.ms": str(30 * DAY_MS)}),
    TopicSpec("predictions.dlq", 1, {"retention.ms": str(14 * DAY_MS)}),
)


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
