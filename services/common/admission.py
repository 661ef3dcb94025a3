"""Admission: which records a stage still processes when it falls behind.

The stage's lag, per partition (records behind the high watermark, seconds behind the newest
record read), plus the lag of the group reading its output when that is watched
(services/common/downstream.py), picks a shed level (services/common/shedding.py); a record
below the level's minimum priority is shed: counted, copied to the audit topic with why, and
committed, before any work is spent on it. The decision needs only the record's envelope
(services/common/envelope.py), never its value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message, TopicPartition

from . import metrics
from .deadletters import Source
from .downstream import DownstreamWatch
from .envelope import Envelope
from .kafka import AUTO_COMMIT_INTERVAL_S, Outgoing
from .positions import PartitionKey
from .settings import StreamSettings
from .shedding import Lag, ShedPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """The newest record read from one partition in a fetch, and that partition's high watermark."""

    topic_partition: PartitionKey
    offset: int
    timestamp_ms: int
    high_watermark: int


async def readings(consumer: Any, messages: list[Message]) -> list[Reading]:
    """The newest record of each partition in a fetch, with the partition's high watermark (as
    the consumer last heard it: no request)."""
    newest = {Source.of(m).partition_key: m for m in messages}
    found = []
    for (topic, partition), m in newest.items():
        _, high = await consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        found.append(Reading((topic, partition), Source.of(m).offset, m.timestamp()[1], high))
    return found


def partition_lag(reading: Reading, now_s: float) -> Lag:
    behind = max(0, reading.high_watermark - reading.offset - 1) if reading.high_watermark >= 0 else 0
    return Lag(behind, max(0.0, now_s - reading.timestamp_ms / 1000))


class Admission:
    def __init__(self, stage: str, settings: StreamSettings, downstream: DownstreamWatch | None = None) -> None:
        self.stage = stage
        self.settings = settings
        self.policy = ShedPolicy(
            settings.shed_levels if settings.shedding_enabled else [],
            exit_ratio=settings.shed_exit_ratio,
            min_dwell_s=settings.shed_min_dwell_s,
        )
        self.downstream = downstream
        self._lags: dict[PartitionKey, Lag] = {}
        # Series that exist from the start, so dashboards show a zero rather than nothing.
        metrics.SHED_LEVEL.labels(stage).set(0)
        metrics.SHED_MIN_PRIORITY.labels(stage).set(float("nan"))

    @classmethod
    def for_stage(cls, stage: str, settings: StreamSettings) -> Admission:
        """With the next stage's group watched when shedding is on and that group is named."""
        downstream = None
        if settings.shedding_enabled and settings.shed_levels and settings.downstream_group and settings.output_topic:
            downstream = DownstreamWatch(
                settings.kafka,
                stage,
                settings.output_topic,
                settings.downstream_group,
                grace_s=AUTO_COMMIT_INTERVAL_S,
            )
        return cls(stage, settings, downstream)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the next stage's lag until `stop` (nothing to do when it is not watched)."""
        if self.downstream is not None:
            await self.downstream.run(stop)

    def observe(self, readings: Iterable[Reading], now_s: float | None = None) -> None:
        """Update the lag from one fetch; an empty fetch after a full wait means caught up."""
        now_s = time.time() if now_s is None else now_s
        readings = list(readings)
        if not readings:
            self._lags = dict.fromkeys(self._lags, Lag(0, 0.0))
        for reading in readings:
            self._lags[reading.topic_partition] = partition_lag(reading, now_s)
        for (topic, partition), lag in self._lags.items():
            metrics.CONSUMER_LAG.labels(self.stage, topic, str(partition)).set(lag.records)
            metrics.CONSUMER_LAG_SECONDS.labels(self.stage, topic, str(partition)).set(lag.seconds)
        self._update_level()

    def forget(self, partitions: Iterable[PartitionKey]) -> None:
        for tp in partitions:
            self._lags.pop(tp, None)

    def admits(self, envelope: Envelope) -> bool:
        return self.policy.keep(envelope.priority)

    def shed(
        self, *, value: bytes, key: str | bytes | None, envelope: Envelope, source: Source, decoded: bool
    ) -> Outgoing | None:
        """Count a shed record; its audit copy when the stage keeps one."""
        metrics.SHED.labels(self.stage, str(envelope.priority)).inc()
        if decoded:
            metrics.SHED_DECODED.labels(self.stage).inc()
        if not self.settings.shed_audit:
            return None
        lag = self.decision_lag()
        headers = [
            *envelope.headers(),
            ("reason", b"shed"),
            ("stage", self.stage.encode()),
            ("min_priority", str(self.policy.min_priority).encode()),
            ("lag_records", str(lag.records).encode()),
            ("lag_seconds", f"{lag.seconds:.1f}".encode()),
            *source.headers(),
        ]
        return Outgoing(self.settings.shed_topic, value, key=key, headers=headers, kind="shed")

    def own_lag(self) -> Lag:
        """Records behind over all partitions, seconds behind at the worst one."""
        return Lag(
            sum(lag.records for lag in self._lags.values()),
            max((lag.seconds for lag in self._lags.values()), default=0.0),
        )

    def decision_lag(self) -> Lag:
        """What shedding goes by: this stage's lag, plus the next stage's when it is watched,
        since a record admitted now waits in both queues."""
        own = self.own_lag()
        if self.downstream is None:
            return own
        down = self.downstream.lag()
        return Lag(own.records + down.records, own.seconds + down.seconds)

    def _update_level(self) -> None:
        total = self.decision_lag()
        before = self.policy.level
        floor = self.policy.update(total, time.monotonic())
        if self.policy.level == before:
            return
        log.warning(
            "shed level changed",
            extra={
                "fields": {
                    "stage": self.stage,
                    "shed_level": self.policy.level,
                    "min_priority": floor,
                    "lag_records": total.records,
                    "lag_seconds": round(total.seconds, 1),
                }
            },
        )
        metrics.SHED_LEVEL.labels(self.stage).set(self.policy.level)
        metrics.SHED_MIN_PRIORITY.labels(self.stage).set(float("nan") if floor is None else floor)
