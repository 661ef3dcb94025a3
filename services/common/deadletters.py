"""Dead letters: the one way any stage, ingest included, writes a record it cannot process.

A dead letter is the input unchanged, on the dead-letter topic, with headers saying why and
where it came from: `error` (a short reason code), `error_detail`, `stage`, the envelope
(`priority`, `ingest_ts_ms`) when known, and for a record read from Kafka `source_topic`,
`source_partition` and `source_offset`, which `make redrive` uses to put it back. It is
counted in `tagstream_dead_letters_total{stage,reason}` and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from confluent_kafka import Message

from . import metrics
from .envelope import Envelope
from .kafka import Headers, Outgoing

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 2000


@dataclass(frozen=True)
class Source:
    """Where a record was read: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, message: Message) -> Source:
        """Where a consumed (hence fully positioned) message was read."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        return cls(topic, partition, offset)

    @property
    def partition_key(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]

    def fields(self) -> dict[str, object]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def dead_letter(
    *,
    stage: str,
    topic: str,
    value: bytes,
    key: str | bytes | None,
    reason: str,
    detail: str = "",
    envelope: Envelope | None = None,
    source: Source | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> Outgoing:
    """The dead letter for one input, counted and logged; the caller writes it."""
    where = source.fields() if source is not None else {}
    log.warning("dead letter", extra={"fields": {**where, "stage": stage, "reason": reason, "detail": detail[:500]}})
    metrics.DEAD_LETTERS.labels(stage, reason).inc()
    headers: list[tuple[str, bytes]] = [(name, text.encode(errors="replace")) for name, text in extra]
    if envelope is not None:
        headers += envelope.headers()
    headers += [
        ("error", reason.encode()),
        ("error_detail", detail.encode(errors="replace")[:MAX_DETAIL_BYTES]),
        ("stage", stage.encode()),
    ]
    if source is not None:
        headers += source.headers()
    return Outgoing(topic, value, key=key, headers=headers, kind="dead_letter")


#: what is kept of a value the broker refused for its size: well under any broker's limit
TRUNCATED_BYTES = 64 * 1024


def truncated(record: Outgoing, why: str) -> Outgoing:
    """The same record with its value cut to `TRUNCATED_BYTES`, for one the broker refused for
    its size; header `value_truncated` gives the original length and why. The source position
    in its headers, where there is one, still leads to the whole original."""
    note = f"{len(record.value)} bytes: {why}"
    headers: Headers = [*record.headers, ("value_truncated", note.encode(errors="replace")[:MAX_DETAIL_BYTES])]
    return replace(record, value=record.value[:TRUNCATED_BYTES], headers=headers)
