"""Routing data carried in Kafka headers, so a stage can route without decoding the value.

Every record on `tweets`, `images` and `predictions`, and their `.dlq` and `.shed` copies,
carries two headers, decimal ASCII: `priority` (higher is more important; shedding drops the
lowest first) and `ingest_ts_ms` (when ingest read the post: the start of end-to-end latency).
Ingest sets them; every stage carries them forward onto what it writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PRIORITY = "priority"
INGEST_TS_MS = "ingest_ts_ms"

#: Kafka headers as confluent-kafka hands them over: (name, value) pairs, the value may be None
WireHeaders = Sequence[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Envelope:
    priority: int
    ingest_ts_ms: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [(PRIORITY, str(self.priority).encode()), (INGEST_TS_MS, str(self.ingest_ts_ms).encode())]


def from_headers(headers: WireHeaders | None) -> Envelope | None:
    """The envelope in `headers`, or None when either header is missing or not a decimal integer
    (a record from a producer that predates the headers: the caller reads the value instead)."""
    if not headers:
        return None
    priority = ingest_ts_ms = None
    for name, value in headers:
        if name == PRIORITY:
            priority = _decimal(value)
        elif name == INGEST_TS_MS:
            ingest_ts_ms = _decimal(value)
    if priority is None or ingest_ts_ms is None:
        return None
    return Envelope(priority, ingest_ts_ms)


def _decimal(value: str | bytes | None) -> int | None:
    # int() also takes '+', '_', spaces and non-ASCII digits; a header is plain ASCII digits.
    if isinstance(value, str):
        value = value.encode(errors="replace")
    if not value or len(value) > 20:
        return None
    digits = value[1:] if value[:1] == b"-" else value
    if not digits.isdigit():  # bytes.isdigit is ASCII only
        return None
    return int(value)
