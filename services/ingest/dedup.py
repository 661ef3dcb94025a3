"""Drop posts delivered twice: the ids of the most recent posts, in a bounded window.

After a reconnect (and always with `backfill_minutes`) X may deliver a post again; the
window only needs to span a reconnect, so it is bounded by count, oldest forgotten first.
It survives a restart: at start it is filled again from the keys (tweet ids) of the newest
records of the `tweets` topic, which a restarted ingest must not write twice either.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

from confluent_kafka import Consumer, KafkaError, TopicPartition

from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, tweet_id: str) -> bool:
        """Remember `tweet_id`; False when it is already in the window (a duplicate)."""
        if tweet_id in self._ids:
            self._ids.move_to_end(tweet_id)
            return False
        self._ids[tweet_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, tweet_id: object) -> bool:
        return tweet_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def newest_keys(kafka: KafkaSettings, topic: str, count: int, timeout_s: float = 30.0) -> list[str]:
    """The keys of about the `count` newest committed records of `topic`, oldest first (split
    evenly over its partitions, as tweet ids hash evenly). Blocking; raises on a timeout."""
    consumer = Consumer(
        kafka.client_config()
        | {
            "group.id": "tagstream-ingest-window",  # assigned, never subscribed: nothing is committed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"topic {topic}: {metadata.error}")
        per_partition = math.ceil(count / max(len(metadata.partitions), 1))
        starts = []
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            if high > low:
                starts.append(TopicPartition(topic, partition, max(low, high - per_partition)))
        keyed: list[tuple[int, str]] = []
        if starts:
            consumer.assign(starts)
            _read_to_end(consumer, {tp.partition for tp in starts}, keyed, time.monotonic() + timeout_s)
    finally:
        consumer.close()
    keyed.sort()
    return [key for _, key in keyed]


def _read_to_end(consumer: Consumer, partitions: set[int], keyed: list[tuple[int, str]], deadline: float) -> None:
    while partitions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions {sorted(partitions)} not read to their end in time")
        for message in consumer.consume(num_messages=1000, timeout=1.0):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    partitions.discard(message.partition() or 0)
                    continue
                raise RuntimeError(str(error))
            key = message.key()
            if key:
                keyed.append((message.timestamp()[1], key.decode(errors="replace")))
