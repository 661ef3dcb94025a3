"""The lag of the next stage: how far the consumer group reading our output is behind.

A record a stage admits now waits in its own queue and then in the next stage's. If the next
stage is behind, it will shed the low priorities anyway, after this stage has paid to process
them; dropping them here instead is Aurora's "drop as early as possible" (Tatbul et al., VLDB
2003). So a stage may watch the group that reads its output and add that group's lag to its own.

Only Kafka's own bookkeeping is read: the group's committed offsets and the topic's high
watermarks. Seconds behind come from a `WriteClock` per partition, which learns when each offset
was written by sampling the high watermark over time (the interpolation Kafka lag exporters
use), so no record needs to be read and no other service needs to be asked.

They are read with a consumer that carries the group's id but never joins it (it neither
subscribes nor is assigned anything), not with the admin client: librdkafka's admin group calls
abort the whole process when they time out while a broker is down
(confluentinc/librdkafka#4605, `rd_kafka_enq_once_del_source_return`), which the fetcher did
when the broker restarted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from . import metrics
from .settings import KafkaSettings
from .shedding import Lag

log = logging.getLogger(__name__)


class WriteClock:
    """When offsets of one partition were written, from (high watermark, time) samples.

    The high watermark at time t is one past the last offset written by t, so offset o was
    written between the last sample with high <= o and the first with high > o; linear
    interpolation between the two places it. While the watermark stands still only the first
    and the last time it was seen are kept, and at most `max_samples` samples in all.
    """

    def __init__(self, max_samples: int = 3600) -> None:
        self._highs: deque[int] = deque(maxlen=max_samples)
        self._times: deque[float] = deque(maxlen=max_samples)

    def observe(self, high: int, at: float) -> None:
        if self._highs and high < self._highs[-1]:  # the topic was recreated or truncated
            self._highs.clear()
            self._times.clear()
        if len(self._highs) >= 2 and self._highs[-2] == self._highs[-1] == high:
            self._times[-1] = at  # a still watermark: keep when it was first and last seen
            return
        self._highs.append(high)
        self._times.append(at)

    def written_at(self, offset: int) -> float | None:
        """When `offset` was written (interpolated), the oldest sample's time if it is older
        than every sample, None if it is not written yet or nothing was observed."""
        if not self._highs or offset >= self._highs[-1]:
            return None
        i = bisect.bisect_right(self._highs, offset)  # first sample whose high > offset
        if i == 0:
            return self._times[0]
        low_high, high_high = self._highs[i - 1], self._highs[i]
        low_t, high_t = self._times[i - 1], self._times[i]
        return low_t + (high_t - low_t) * (offset - low_high + 1) / (high_high - low_high)

    def caught_up(self, position: int) -> bool:
        """A group at `position` has read everything: it is at the high watermark, or one short
        of it, where a transaction's end marker sits (a marker takes an offset but is never read
        as a record, so a transactional writer's reader stays one short for as long as nothing
        new is written; counting the marker would age it into a lag that never ends)."""
        return bool(self._highs) and position >= self._highs[-1] - 1

    def high_at(self, at: float) -> int | None:
        """The high watermark at time `at` (interpolated), None before the first sample."""
        if not self._times or at < self._times[0]:
            return None
        i = bisect.bisect_right(self._times, at)  # first sample after `at`
        if i == len(self._times):
            return self._highs[-1]
        low_t, high_t = self._times[i - 1], self._times[i]
        low_high, high_high = self._highs[i - 1], self._highs[i]
        if high_t <= low_t:
            return high_high
        return low_high + int((high_high - low_high) * (at - low_t) / (high_t - low_t))


def group_lag(committed: Mapping[int, int], clocks: Mapping[int, WriteClock], now: float, grace_s: float = 0.0) -> Lag:
    """How far a group whose committed offsets are `committed` is behind, not counting what
    was written in the last `grace_s`: records written before `now - grace_s` and not yet
    committed, over all partitions, and at the worst partition the age of the oldest of them
    less `grace_s`.

    A group commits every so often (`grace_s` should be that interval), so a group that keeps
    up still reads up to an interval's worth of records behind; without the grace that slack
    grows with the rate and alone would cross a shedding threshold at GPU rates. A partition
    the group never committed is left out: a group that is not there yet is not behind; so is
    one caught up to its last transaction marker (`WriteClock.caught_up`).
    """
    records, seconds = 0, 0.0
    for partition, clock in clocks.items():
        position = committed.get(partition)
        if position is None or clock.caught_up(position):
            continue
        known = clock.high_at(now - grace_s)
        if known is not None:
            records += max(0, known - position)
        written = clock.written_at(position)
        if written is not None:
            seconds = max(seconds, now - written - grace_s)
    return Lag(records, seconds)


class DownstreamWatch:
    """Polls the lag of consumer group `group` on `topic` every `interval_s`.

    `lag()` is the latest figure while it is fresh. One that could not be renewed for
    `stale_after_s` counts as no lag: a lag nobody can read is no reason to keep shedding.
    `grace_s` is the group's commit interval (see `group_lag`). Seconds are a lower bound
    when the watch starts while the group is already behind: offsets older than the first
    look get the first look's time, so that figure grows from zero; records are exact.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        stage: str,
        topic: str,
        group: str,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        stale_after_s: float = 15.0,
        grace_s: float = 1.0,
    ) -> None:
        self.stage, self.topic, self.group = stage, topic, group
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.grace_s = grace_s
        self._lag = Lag(0, 0.0)
        self._measured_at = 0.0  # monotonic
        self._reader = Consumer(
            kafka.client_config()
            | {"group.id": group, "enable.auto.commit": False, "client.id": f"tagstream-{stage}-downstream-watch"}
        )
        self._clocks: dict[int, WriteClock] = {}
        self._records = metrics.DOWNSTREAM_LAG.labels(stage, topic, group)
        self._seconds = metrics.DOWNSTREAM_LAG_SECONDS.labels(stage, topic, group)

    def lag(self) -> Lag:
        return Lag(0, 0.0) if self._stale() else self._lag

    def _stale(self) -> bool:
        return time.monotonic() - self._measured_at > self.stale_after_s

    async def run(self, stop: asyncio.Event) -> None:
        log.info("watching the next stage's lag", extra={"fields": {"topic": self.topic, "group": self.group}})
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the watch outlives any one failed look
                log.warning("next stage's lag unknown", extra={"fields": {"group": self.group, "error": str(exc)}})
                if self._stale():  # the gauges say what shedding goes by
                    self._records.set(0)
                    self._seconds.set(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def poll_once(self) -> Lag:
        highs, committed = await asyncio.to_thread(self._look)
        now = time.monotonic()
        for partition, high in highs.items():
            self._clocks.setdefault(partition, WriteClock()).observe(high, now)
        self._lag = group_lag(committed, self._clocks, now, self.grace_s)
        self._measured_at = time.monotonic()
        self._records.set(self._lag.records)
        self._seconds.set(self._lag.seconds)
        return self._lag

    def _look(self) -> tuple[dict[int, int], dict[int, int]]:
        """The topic's high watermarks and the group's committed offsets, by partition (blocking)."""
        metadata = self._reader.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(metadata.error if metadata is not None else f"no topic {self.topic}")
        partitions = [TopicPartition(self.topic, p) for p in sorted(metadata.partitions)]
        highs = {
            tp.partition: self._reader.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)[1]
            for tp in partitions
        }
        committed = self._reader.committed(partitions, timeout=self.timeout_s)
        return highs, {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
