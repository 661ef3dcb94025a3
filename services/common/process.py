"""What one input record produces, decided without Kafka: outputs, dead letters or a shed copy.

The envelope (priority, ingest time) comes from the record's headers; only a record without
them (from a producer that predates them) is decoded to learn it. Admission then keeps or
sheds the record before its value is decoded. A kept record is decoded and given to the
stage's handler, retried while a dependency is down (`RetryableError`); a `RecordError`, or
any other exception, makes it a dead letter. Every output carries the envelope forward.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import Message

from .admission import Admission
from .avro import Codec, Record
from .deadletters import Source, dead_letter, truncated
from .delivery import DEFAULT_BACKOFF, Backoff
from .envelope import Envelope, WireHeaders, from_headers
from .errors import RecordError, RetryableError
from .kafka import DeliveryError, Outgoing
from .settings import StreamSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    value: bytes
    key: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """Part of a record failed (one image of a post): the input goes to the DLQ for that part."""

    reason: str
    detail: str = ""
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Record], Awaitable[Sequence[Output | DeadLetter]]]


@dataclass(frozen=True)
class Outcome:
    records: list[Outgoing]
    #: the input's envelope when it was processed; None when it was shed or could not be read
    envelope: Envelope | None


class Processor:
    def __init__(
        self,
        stage: str,
        settings: StreamSettings,
        codec: Codec,
        handle: Handler,
        admission: Admission,
        retry: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.stage, self.settings, self.codec = stage, settings, codec
        self.handle, self.admission, self.retry = handle, admission, retry

    async def outcome(self, message: Message) -> Outcome:
        source = Source.of(message)
        value: bytes = message.value() or b""
        envelope = from_headers(_header_list(message))
        record: Record | None = None
        try:
            if envelope is None:  # from a producer that predates the headers: read the value
                record = self.codec.decode(value)
                envelope = self.codec.envelope(record)
            if not self.admission.admits(envelope):
                decoded = record is not None
                copy = self.admission.shed(
                    value=value, key=message.key(), envelope=envelope, source=source, decoded=decoded
                )
                return Outcome([copy] if copy else [], None)
            results = await self._handle(record if record is not None else self.codec.decode(value))
            records = [
                Outgoing(r.topic, r.value, r.key, envelope.headers())
                if isinstance(r, Output)
                else self.dead_letter(message, envelope, r.reason, r.detail, r.headers)
                for r in results
            ]
        except RecordError as exc:
            return Outcome([self.dead_letter(message, envelope, exc.reason, exc.detail)], envelope)
        except Exception as exc:  # a bug met on this record: its dead letter says which
            log.exception("unexpected error on a record", extra={"fields": source.fields()})
            letter = self.dead_letter(message, envelope, "internal_error", f"{type(exc).__name__}: {exc}")
            return Outcome([letter], envelope)
        return Outcome(records, envelope)

    def substitute(self, message: Message, refused: Outgoing, error: DeliveryError) -> Outgoing:
        """An output the broker refuses for good dead-letters its input; a refused copy of the
        input (a dead letter, a shed copy) is cut to fit."""
        if refused.topic in (self.settings.dlq_topic, self.settings.shed_topic):
            return truncated(refused, str(error))
        return self.dead_letter(message, from_headers(refused.headers), "output_refused", str(error))

    def dead_letter(
        self,
        message: Message,
        envelope: Envelope | None,
        reason: str,
        detail: str,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Outgoing:
        return dead_letter(
            stage=self.stage,
            topic=self.settings.dlq_topic,
            value=message.value() or b"",
            key=message.key(),
            reason=reason,
            detail=detail,
            envelope=envelope,
            source=Source.of(message),
            extra=extra,
        )

    async def _handle(self, record: Record) -> Sequence[Output | DeadLetter]:
        attempt = 0
        while True:
            try:
                return await self.handle(record)
            except RetryableError as exc:
                delay = self.retry.delay(attempt)
                attempt += 1
                fields = {"stage": self.stage, "error": str(exc), "retry_in_s": delay}
                log.warning("dependency unavailable, will retry", extra={"fields": fields})
                await asyncio.sleep(delay)


def _header_list(message: Message) -> WireHeaders | None:
    headers = message.headers()
    return list(headers.items()) if isinstance(headers, dict) else headers
