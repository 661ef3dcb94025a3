"""Replay a recorded filtered stream (one payload per line) into the `tweets` topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from services.common import metrics
from services.common.kafka import AsyncProducer

from .loadshape import LoadShape, Throttle, shaped_payloads
from .payload import PayloadError, parse_line
from .produce import STAGE, PayloadProducer, Tally
from .settings import IngestSettings

#: what a replay reports: lines read, records produced, posts without images, dead letters by reason
ReplaySummary = Tally


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
    lines: Iterable[bytes],
    settings: IngestSettings,
    producer: AsyncProducer,
    rate: float = 0.0,
    priorities: Mapping[str, int] | None = None,
) -> ReplaySummary:
    """Produce every line; a failed delivery raises, so a replay never reports records it lost."""
    payloads = _replay_producer(settings, producer, priorities)
    pacer = Pacer(rate)
    pending: list[asyncio.Future[None]] = []
    for line in lines:
        outgoing = payloads.prepare(line)
        if outgoing is None:
            continue
        if outgoing.tweet_id is not None:
            await pacer.wait()
        pending.append(payloads.send(outgoing))
        if len(pending) >= 1000:
            await _settle(pending)
    await _settle(pending)
    return payloads.tally


async def replay_shaped(
    payloads: list[dict[str, Any]],
    shape: LoadShape,
    high_share: float,
    settings: IngestSettings,
    producer: AsyncProducer,
    priorities: Mapping[str, int] | None = None,
    id_base: int | None = None,
    throttle: Throttle | None = None,
) -> ReplaySummary:
    """Send the file's posts cycled to `shape`'s schedule, `high_share` of them high priority.

    With `throttle`, posts over its budget are never read, as the seed project's sender did.
    """
    sender = _replay_producer(settings, producer, priorities)
    times = list(shape.send_times())
    base = id_base if id_base is not None else time.time_ns() // 1000 * 1000
    started = time.monotonic()
    pending: list[asyncio.Future[None]] = []
    for at, (payload, high) in zip(times, shaped_payloads(payloads, len(times), high_share, base), strict=True):
        delay = started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if throttle is not None and not throttle.admit(at):
            sender.tally.throttled += 1
            sender.tally.throttled_high += high
            continue
        outgoing = sender.prepare(b"", payload)
        if outgoing is not None:
            pending.append(sender.send(outgoing))
        if len(pending) >= 1000:
            await _settle(pending)
    await _settle(pending)
    return sender.tally


#: the dead-letter reasons a replay can count: a line that is not a post (services/ingest/payload.py,
#: produce.py); `line_too_long` is the live stream's only
DEAD_LETTER_REASONS = ("bad_json", "bad_encoding", "not_a_post", "bad_post", "too_large")


def zero_series(settings: IngestSettings) -> None:
    """Create the labelled series a replay counts, at 0, before it is scraped: a series born
    with its first increment has no earlier sample, and `rate()` sees nothing of a short run."""
    metrics.RECORDS_CONSUMED.labels(STAGE, "replay")
    metrics.RECORDS_PRODUCED.labels(STAGE, settings.output_topic)
    metrics.RECORDS_SKIPPED.labels(STAGE, "no_images")
    for reason in DEAD_LETTER_REASONS:
        metrics.DEAD_LETTERS.labels(STAGE, reason)


def read_payloads(path: Path) -> list[dict[str, Any]]:
    """The posts of a replay file; lines that are not JSON objects are left out."""
    payloads = []
    for line in read_lines(path):
        try:
            payload = parse_line(line)
        except (PayloadError, UnicodeDecodeError):
            continue
        if payload is not None:
            payloads.append(payload)
    return payloads


def _replay_producer(
    settings: IngestSettings, producer: AsyncProducer, priorities: Mapping[str, int] | None
) -> PayloadProducer:
    return PayloadProducer(
        producer,
        output_topic=settings.output_topic,
        dlq_topic=settings.dlq_topic,
        priorities=settings.rule_priorities if priorities is None else priorities,
        default_priority=settings.default_priority,
        source="replay",
    )


async def _settle(pending: list[asyncio.Future[None]]) -> None:
    await asyncio.gather(*pending)
    pending.clear()


def read_lines(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        yield from f
