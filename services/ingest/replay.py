"""Replay a recorded filtered stream (one payload per line) into the `tweets` topic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Message

from services.common import metrics
from services.common.avro import TWEETS
from services.common.kafka import AsyncProducer
from services.common.timeutil import now_ms

from .payload import PayloadError, parse_line, to_tweet_record
from .settings import IngestSettings

log = logging.getLogger(__name__)
STAGE = "ingest"


@dataclass
class ReplaySummary:
    lines: int = 0
    produced: int = 0
    without_images: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)


class Pacer:
    """Spaces sends to `rate` per second (0: no pacing), catching up after a slow send."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        delay = self._next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next = max(self._next, time.monotonic() - 1.0) + self.interval


async def replay_lines(
    lines: Iterable[bytes], settings: IngestSettings, producer: AsyncProducer, rate: float = 0.0
) -> ReplaySummary:
    summary = ReplaySummary()
    pacer = Pacer(rate)
    pending: list[asyncio.Future[Message]] = []
    for line in lines:
        record = None
        try:
            payload = parse_line(line)
            if payload is None:
                continue
            summary.lines += 1
            metrics.RECORDS_CONSUMED.labels(STAGE, "replay").inc()
            record = to_tweet_record(
                payload,
                priorities=settings.rule_priorities,
                default_priority=settings.default_priority,
                ingest_ts_ms=now_ms(),
            )
        except (PayloadError, UnicodeDecodeError) as exc:
            reason = exc.reason if isinstance(exc, PayloadError) else "bad_encoding"
            summary.dead_letters[reason] = summary.dead_letters.get(reason, 0) + 1
            pending.append(_dead_letter(producer, settings.dlq_topic, line, reason, str(exc)))
            continue
        if record is None:
            summary.without_images += 1
            metrics.RECORDS_SKIPPED.labels(STAGE, "no_images").inc()
            continue
        await pacer.wait()
        pending.append(producer.produce(settings.output_topic, TWEETS.encode(record), key=record["tweet_id"]))
        summary.produced += 1
        if len(pending) >= 1000:
            await _settle(pending)
    await _settle(pending)
    metrics.RECORDS_PRODUCED.labels(STAGE, settings.output_topic).inc(summary.produced)
    return summary


def _dead_letter(producer: AsyncProducer, topic: str, line: bytes, reason: str, detail: str) -> asyncio.Future[Message]:
    metrics.DEAD_LETTERS.labels(STAGE, reason).inc()
    log.warning("dead letter", extra={"fields": {"reason": reason, "detail": detail[:200]}})
    headers = [("error", reason.encode()), ("error_detail", detail.encode()[:2000]), ("stage", STAGE.encode())]
    return producer.produce(topic, line, headers=headers)


async def _settle(pending: list[asyncio.Future[Message]]) -> None:
    """Wait for deliveries; a failed delivery raises, so a replay never reports records it lost."""
    await asyncio.gather(*pending)
    pending.clear()


def read_lines(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        yield from f
