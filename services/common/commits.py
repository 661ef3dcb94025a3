"""When a stage's outputs are written and its input offsets committed: the delivery guarantee.

`AtLeastOnce` writes a record's outputs (retrying until the broker has them) and only then
lets its offset be committed: a crash in between processes the record again, so a reader
may see an output twice. librdkafka commits the stored offsets in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from .delivery import DEFAULT_BACKOFF, Backoff, Producer, Replace, deliver
from .kafka import Outgoing
from .positions import Positions, Ticket
from .positions import TopicPartition as TP

log = logging.getLogger(__name__)


class Commits(Protocol):
    positions: Positions[Any]

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        """The record of `ticket` is done and `records` are what it produces."""

    async def checkpoint(self, consumer: Any) -> None:
        """Commit what may be committed; called every turn of the loop."""

    async def revoked(self, consumer: Any, partitions: Iterable[TP]) -> None:
        """`partitions` are being taken away: commit what they finished, forget the rest."""

    def lost(self, partitions: Iterable[TP]) -> None:
        """`partitions` were taken away without notice: commit nothing of them."""


class AtLeastOnce:
    def __init__(self, producer: Producer, stage: str, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.producer = producer
        self.stage = stage
        self.backoff = backoff
        self.positions: Positions[None] = Positions()

    async def complete(self, ticket: Ticket, records: Sequence[Outgoing], replace: Replace) -> None:
        await deliver(self.producer, records, self.stage, replace, self.backoff)
        self.positions.complete(ticket)

    async def checkpoint(self, consumer: Any) -> None:
        """Hand librdkafka the positions that moved since last time, in one call."""
        moved = self.positions.take()
        if not moved:
            return
        try:
            await consumer.store_offsets(offsets=_offsets(moved))
        except KafkaException as exc:  # a partition revoked meanwhile: its new owner re-reads
            log.info("offsets not stored", extra={"fields": {"error": str(exc)}})

    async def revoked(self, consumer: Any, partitions: Iterable[TP]) -> None:
        # What finished is stored now, so the commit on revocation includes it.
        final = self.positions.revoke(partitions)
        if final:
            await consumer.store_offsets(offsets=_offsets(final))

    def lost(self, partitions: Iterable[TP]) -> None:
        self.positions.revoke(partitions)


def _offsets(positions: dict[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
