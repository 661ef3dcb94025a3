"""Produce one stream payload: a `tweets` record for a post with images, a dead letter for a
line that is not a post. Shared by replay, the live stream and backfill, so the three produce
the same records and count them the same way.

Every record carries the envelope headers (`priority`, `ingest_ts_ms`) the later stages route
by. A record is written until the broker has it (services/common/delivery.py); one it refuses
for its size becomes a dead letter, cut to fit, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.common import metrics
from services.common.avro import TWEETS
from services.common.deadletters import dead_letter, truncated
from services.common.delivery import Producer, deliver
from services.common.envelope import Envelope, from_headers
from services.common.kafka import DeliveryError, Outgoing
from services.common.timeutil import now_ms

from . import metrics as ingest_metrics
from .dedup import RecentIds
from .payload import PayloadError, parse_line, to_tweet_record

log = logging.getLogger(__name__)
STAGE = "ingest"


@dataclass
class Tally:
    """What happened to the lines one producer was given."""

    lines: int = 0
    produced: int = 0
    without_images: int = 0
    duplicates: int = 0
    #: posts a shaped replay's static throttle never sent
    throttled: int = 0
    throttled_high: int = 0
    #: posts the broker refused for their size (each became a dead letter)
    refused: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """One record ready to send: a post (`tweet_id` set) or a dead letter."""

    record: Outgoing
    tweet_id: str | None = None
    #: the payload line it came from, dead-lettered if the broker refuses the record
    line: bytes = b""


class PayloadFile:
    """Appends payloads, one JSON object per line, in exactly the format `make replay` reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab")

    def write(self, line: bytes) -> None:
        # Flushed per line: a crash loses at most the line being written.
        self._file.write(line.strip() + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class PayloadProducer:
    """Turns payload lines into records and sends them, counting into `tally` and the metrics.

    `source` labels `tagstream_records_consumed_total` (replay, x_stream, x_search). With
    `recent`, a post whose id is in the window is dropped as a duplicate. With `recording`,
    every payload that is not a keep-alive or a duplicate is appended to that file.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        output_topic: str,
        dlq_topic: str,
        priorities: Mapping[str, int],
        default_priority: int,
        source: str,
        recent: RecentIds | None = None,
        recording: PayloadFile | None = None,
    ) -> None:
        self.producer = producer
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.priorities = dict(priorities)
        self.default_priority = default_priority
        self.source = source
        self.recent = recent
        self.recording = recording
        self.tally = Tally()

    def prepare(self, line: bytes, payload: dict[str, Any] | None = None) -> Prepared | None:
        """The record to send for `line` (already parsed into `payload` if given), or None:
        a keep-alive, a post without images, a duplicate."""
        try:
            if payload is None:
                payload = parse_line(line)
                if payload is None:
                    return None
            self._count_line()
            record = to_tweet_record(
                payload, priorities=self.priorities, default_priority=self.default_priority, ingest_ts_ms=now_ms()
            )
        except (PayloadError, UnicodeDecodeError) as exc:
            self._count_line_if_unparsed(payload)
            self._record(line)
            reason = exc.reason if isinstance(exc, PayloadError) else "bad_encoding"
            return self.dead_letter(line, reason, str(exc))
        # to_tweet_record has checked the id; posts without images are deduplicated too, so a
        # recording holds each post once.
        if self.recent is not None and not self.recent.add(str(payload["data"]["id"])):
            self.tally.duplicates += 1
            metrics.RECORDS_SKIPPED.labels(STAGE, "duplicate").inc()
            return None
        self._record(line)
        if record is None:
            self.tally.without_images += 1
            metrics.RECORDS_SKIPPED.labels(STAGE, "no_images").inc()
            return None
        tweet_id = record["tweet_id"]
        headers = Envelope(record["priority"], record["ingest_ts_ms"]).headers()
        return Prepared(Outgoing(self.output_topic, TWEETS.encode(record), tweet_id, headers), tweet_id, line)

    def send(self, outgoing: Prepared) -> asyncio.Future[None]:
        """Hand the record to the producer; the future resolves once the broker has it (or has
        the dead letter that replaced a post it refused)."""
        return asyncio.ensure_future(self._write(outgoing))

    async def _write(self, outgoing: Prepared) -> None:
        refused = False

        def substitute(record: Outgoing, error: DeliveryError) -> Outgoing:
            nonlocal refused
            refused = True
            return self._substitute(outgoing.line, record, error)

        await deliver(self.producer, [outgoing.record], STAGE, substitute)
        if outgoing.tweet_id is not None and not refused:
            self.tally.produced += 1

    def _count_line(self) -> None:
        self.tally.lines += 1
        metrics.RECORDS_CONSUMED.labels(STAGE, self.source).inc()

    def _count_line_if_unparsed(self, payload: dict[str, Any] | None) -> None:
        # A line that failed to parse was not counted yet; one that parsed was.
        if payload is None:
            self._count_line()

    def _record(self, line: bytes) -> None:
        if self.recording is not None:
            self.recording.write(line)

    def dead_letter(
        self,
        line: bytes,
        reason: str,
        detail: str,
        envelope: Envelope | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Prepared:
        self.tally.dead_letters[reason] = self.tally.dead_letters.get(reason, 0) + 1
        letter = dead_letter(
            stage=STAGE,
            topic=self.dlq_topic,
            value=line.strip(),
            key=None,
            reason=reason,
            detail=detail,
            envelope=envelope,
            extra=extra,
        )
        return Prepared(letter)

    def _substitute(self, line: bytes, refused: Outgoing, error: DeliveryError) -> Outgoing:
        """A post the broker refuses for its size becomes a dead letter of its line, cut to fit
        as a dead letter it refuses is."""
        if refused.topic == self.dlq_topic:
            return truncated(refused, str(error))
        ingest_metrics.DELIVERY_FAILURES.inc()
        self.tally.refused += 1
        letter = self.dead_letter(line, "too_large", str(error), from_headers(refused.headers)).record
        return truncated(letter, "too_large")
