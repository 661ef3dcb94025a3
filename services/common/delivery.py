"""Writing records until the broker has them: a failed write is retried, never given up.

A record whose delivery report says it failed (the broker unreachable for longer than the
delivery timeout, a leader election, a topic not created yet) is written again, with
exponential backoff, until it is delivered or the process ends. A stage therefore never
leaves a partition stuck behind a record it gave up on, and never commits past one.

The one failure retrying cannot cure is a record the broker refuses for its size: the
caller's `replace` gives something smaller to write in its place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import KafkaError, Message

from . import metrics
from .kafka import DeliveryError, Outgoing

log = logging.getLogger(__name__)

#: delivery errors that no retry can cure: the record itself is refused
_REFUSED = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,
}


class Producer(Protocol):
    def send(self, record: Outgoing) -> asyncio.Future[Message]: ...


#: what to write instead of a record the broker refused for good
Replace = Callable[[Outgoing, DeliveryError], Outgoing]


def refused(error: DeliveryError) -> bool:
    """No retry can get this record written."""
    return error.error.code() in _REFUSED


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before retry `attempt` (0 for the first): doubling, up to the maximum."""
        return float(min(self.initial_s * 2 ** min(attempt, 32), self.max_s))


DEFAULT_BACKOFF = Backoff()


async def deliver(
    producer: Producer, records: Sequence[Outgoing], stage: str, replace: Replace, backoff: Backoff = DEFAULT_BACKOFF
) -> None:
    """Write `records` (in order) and return once the broker has every one of them, or has
    the replacement of one it refused for good."""
    pending = list(records)
    attempt = 0
    while pending:
        futures = [producer.send(record) for record in pending]
        failed: list[tuple[Outgoing, DeliveryError]] = []
        for record, future in zip(pending, futures, strict=True):
            try:
                await future
            except DeliveryError as exc:
                if not refused(exc):
                    failed.append((record, exc))
                    continue
                substitute = replace(record, exc)
                log.warning("record refused, writing a substitute", extra={"fields": {"error": str(exc)}})
                await deliver(producer, [substitute], stage, _cannot_replace, backoff)
            else:
                if record.kind == "output":
                    metrics.RECORDS_PRODUCED.labels(stage, record.topic).inc()
        if not failed:
            return
        delay = backoff.delay(attempt)
        attempt += 1
        metrics.DELIVERY_RETRIES.labels(stage).inc(len(failed))
        log.warning(
            "records not delivered, writing them again",
            extra={"fields": {"count": len(failed), "error": str(failed[0][1]), "retry_in_s": delay}},
        )
        await asyncio.sleep(delay)
        pending = [record for record, _ in failed]


def _cannot_replace(record: Outgoing, error: DeliveryError) -> Outgoing:
    raise DeliveryError(error.error) from None
