"""Writing records until the broker has them: a failed write is retried, never given up.

A record whose delivery report says it failed (the broker unreachable for longer than the
delivery timeout, a leader election, a topic not created yet) is written again, with
exponential backoff, until it is delivered or the process ends. A stage therefore never
leaves a partition stuck behind a record it gave up on, and never commits past one.

The one failure retrying cannot cure is a record the broker refuses for its size: the
caller's `replace` gives something smaller to write in its place (an output's input as a dead
letter, a copy of the input cut to fit). One policy for both delivery guarantees: `send`.
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
#: how many substitutes a refused record gets: the second, a copy cut to 64 KiB, always fits
MAX_SUBSTITUTES = 2


class Producer(Protocol):
    def send(self, record: Outgoing) -> asyncio.Future[Message]: ...


#: what to write instead of a record the broker refused for good
Replace = Callable[[Outgoing, DeliveryError], Outgoing]


def refused(error: BaseException | None) -> bool:
    """No retry can get this record written."""
    return isinstance(error, DeliveryError) and error.error.code() in _REFUSED


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before retry `attempt` (0 for the first): doubling, up to the maximum."""
        return float(min(self.initial_s * 2 ** min(attempt, 32), self.max_s))


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class Sent:
    record: Outgoing  # what was written: the record, or the substitute of a refused one
    future: asyncio.Future[Message]
    substitutes: int


def send(producer: Producer, record: Outgoing, replace: Replace, substitutes: int = 0) -> Sent:
    """Hand `record` to the producer; one it refuses at once for good (too large for the
    client) is replaced, and the replacement sent, before this returns."""
    while True:
        future = producer.send(record)
        error = future.exception() if future.done() and not future.cancelled() else None
        if not refused(error) or substitutes >= MAX_SUBSTITUTES:
            return Sent(record, future, substitutes)
        assert isinstance(error, DeliveryError)
        log.warning("record refused, writing a substitute", extra={"fields": {"error": str(error)}})
        record, substitutes = replace(record, error), substitutes + 1


async def deliver(
    producer: Producer, records: Sequence[Outgoing], stage: str, replace: Replace, backoff: Backoff = DEFAULT_BACKOFF
) -> None:
    """Write `records` (in order) and return once the broker has every one of them, or has
    the replacement of one it refused for good."""
    pending = [(record, 0) for record in records]  # with the substitutes each has had
    attempt = 0
    while pending:
        sent = [send(producer, record, replace, substitutes) for record, substitutes in pending]
        pending, failed = [], []
        for item in sent:
            try:
                await item.future
            except DeliveryError as exc:
                if refused(exc) and item.substitutes < MAX_SUBSTITUTES:  # refused by the broker itself
                    log.warning("record refused, writing a substitute", extra={"fields": {"error": str(exc)}})
                    pending.append((replace(item.record, exc), item.substitutes + 1))
                else:
                    failed.append((item, exc))
            else:
                if item.record.kind == "output":
                    metrics.RECORDS_PRODUCED.labels(stage, item.record.topic).inc()
        if not failed:
            continue
        delay = backoff.delay(attempt)
        attempt += 1
        metrics.DELIVERY_RETRIES.labels(stage).inc(len(failed))
        log.warning(
            "records not delivered, writing them again",
            extra={"fields": {"count": len(failed), "error": str(failed[0][1]), "retry_in_s": delay}},
        )
        await asyncio.sleep(delay)
        pending += [(item.record, item.substitutes) for item, _ in failed]
