"""Produce one stream payload: a `tweets` record for a post with images, a dead letter for a
line that is not a post. Shared by replay, the live stream and backfill, so the three produce
the same records and count them the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Message

from services.common import metrics
from services.common.avro import TWEETS
from services.common.kafka import AsyncProducer
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
    dead_letters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Outgoing:
    """One record ready to send: a post (`tweet_id` set) or a dead letter."""

    topic: str
    value: bytes
    key: str | None
    headers: tuple[tuple[str, bytes], ...] = ()
    tweet_id: str | None = None


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
        producer: AsyncProducer,
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

    def prepare(self, line: bytes, payload: dict[str, Any] | None = None) -> Outgoing | None:
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
            return self._dead_letter(line, reason, str(exc))
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
        return Outgoing(self.output_topic, TWEETS.encode(record), key=tweet_id, tweet_id=tweet_id)

    def send(self, outgoing: Outgoing) -> asyncio.Future[Message]:
        """Hand the record to the producer; the future resolves on the broker's delivery report."""
        future = self.producer.produce(outgoing.topic, outgoing.value, key=outgoing.key, headers=outgoing.headers)
        future.add_done_callback(lambda done: self._delivered(outgoing, done))
        return future

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

    def dead_letter(self, line: bytes, reason: str, detail: str) -> Outgoing:
        """A dead letter for `line` (counted), to pass to `send`."""
        return self._dead_letter(line, reason, detail)

    def _dead_letter(self, line: bytes, reason: str, detail: str) -> Outgoing:
        self.tally.dead_letters[reason] = self.tally.dead_letters.get(reason, 0) + 1
        metrics.DEAD_LETTERS.labels(STAGE, reason).inc()
        log.warning("dead letter", extra={"fields": {"reason": reason, "detail": detail[:200]}})
        headers = (("error", reason.encode()), ("error_detail", detail.encode()[:2000]), ("stage", STAGE.encode()))
        return Outgoing(self.dlq_topic, line.strip(), key=None, headers=headers)

    def _delivered(self, outgoing: Outgoing, done: asyncio.Future[Message]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if outgoing.tweet_id is None:  # a dead letter
            if error is not None:
                log.error("dead letter not delivered", extra={"fields": {"error": str(error)[:500]}})
            return
        if error is None:
            self.tally.produced += 1
            metrics.RECORDS_PRODUCED.labels(STAGE, outgoing.topic).inc()
            return
        ingest_metrics.DELIVERY_FAILURES.inc()
        if self.recent is not None:
            self.recent.forget(outgoing.tweet_id)
        log.error("post not delivered", extra={"fields": {"tweet_id": outgoing.tweet_id, "error": str(error)[:500]}})
