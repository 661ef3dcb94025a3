"""Which input offsets a stage may commit while records finish out of order.

Records of one partition are processed concurrently and finish in any order. A partition's
committable position only moves past a record once it and every record before it are done,
so a crash re-delivers whatever was unfinished and never skips one. A record may carry a
result with its completion; results come back in offset order as the position moves past
them, which is what a transaction needs to hold exactly the outputs of the offsets it commits.

Each record is tracked with a `Ticket` bound to the partition's tracker at the time: after a
revocation (or a rewind), a late completion of a record read before it changes nothing, even
when the partition is assigned back and the same offset is read again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")
#: a partition as (topic, partition number)
PartitionKey = tuple[str, int]


class _Partition(Generic[R]):
    """Offsets in flight for one partition, in the order they were read."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: dict[int, R | None] = {}

    def add(self, offset: int) -> None:
        if self.pending and offset <= self.pending[-1]:
            raise ValueError(f"offset {offset} is not after {self.pending[-1]}")
        self.pending.append(offset)

    def complete(self, offset: int, result: R | None) -> tuple[int | None, list[R]]:
        """Mark `offset` done: the new position (next offset to read) if it moved, and the
        results of the offsets it moved past, in order."""
        if offset not in self.pending or offset in self.done:
            raise ValueError(f"offset {offset} is not in flight")
        self.done[offset] = result
        position: int | None = None
        released: list[R] = []
        while self.pending and self.pending[0] in self.done:
            head = self.pending.popleft()
            done = self.done.pop(head)
            if done is not None:
                released.append(done)
            position = head + 1
        return position, released


@dataclass(frozen=True)
class Ticket:
    topic: str
    partition: int
    offset: int
    _tracker: object = field(repr=False, compare=False)

    @property
    def partition_key(self) -> PartitionKey:
        return (self.topic, self.partition)


class Positions(Generic[R]):
    """Per-partition offset tracking for one consumer, and the positions ready to commit."""

    def __init__(self) -> None:
        self._partitions: dict[PartitionKey, _Partition[R]] = {}
        self._moved: dict[PartitionKey, int] = {}
        self._taken: dict[PartitionKey, int] = {}  # the last position handed out to commit

    def track(self, topic: str, partition: int, offset: int) -> Ticket:
        tracker = self._partitions.setdefault((topic, partition), _Partition())
        tracker.add(offset)
        return Ticket(topic, partition, offset, tracker)

    def current(self, ticket: Ticket) -> bool:
        """The record's partition has not been revoked (or rewound) since it was read."""
        return self._partitions.get(ticket.partition_key) is ticket._tracker

    def complete(self, ticket: Ticket, result: R | None = None) -> list[R] | None:
        """Mark the record done; the results released in offset order, or None when its
        partition was revoked (or rewound) since it was read: nothing of it may be written."""
        key = ticket.partition_key
        tracker = self._partitions.get(key)
        if tracker is None or tracker is not ticket._tracker:  # not current()
            return None
        position, released = tracker.complete(ticket.offset, result)
        if position is not None:
            self._moved[key] = position
        return released

    def take(self) -> dict[PartitionKey, int]:
        """The positions that moved since the last call, to commit."""
        moved, self._moved = self._moved, {}
        self._taken.update(moved)
        return moved

    def skip_to(self, partition: PartitionKey, position: int) -> None:
        """The consumer reads `partition` on from `position`: with no record of it in flight,
        what lies before it was done or never came as a record (a transaction's markers, an
        aborted transaction's records), so the position may move there. Without this a reader
        of a transactional writer would stay committed before those offsets until the next
        record, and look behind for as long as nothing new was written."""
        tracker = self._partitions.get(partition)
        if (tracker is None or not tracker.pending) and position > self._taken.get(partition, -1):
            self._moved[partition] = max(position, self._moved.get(partition, -1))

    def revoke(self, partitions: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """Stop tracking `partitions`; return the positions they reached and were not taken."""
        final = {}
        for tp in partitions:
            self._partitions.pop(tp, None)
            self._taken.pop(tp, None)
            if tp in self._moved:
                final[tp] = self._moved.pop(tp)
        return final

    def reset(self) -> None:
        """Forget every record in flight and every position not taken (after a rewind)."""
        self._partitions.clear()
        self._moved.clear()
        self._taken.clear()
