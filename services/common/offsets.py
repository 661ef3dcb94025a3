"""Which offset a partition may commit when records finish out of order.

Records of one partition are processed concurrently and finish in any order; the committed
offset may only move past a record once it and every record before it are done, so a
crash re-delivers whatever was unfinished (at-least-once) and never skips one.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets in flight for one partition, in the order they were consumed."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, offset: int) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} is not after {self._pending[-1]}")
        self._pending.append(offset)

    def complete(self, offset: int) -> int | None:
        """Mark `offset` done; return the new commit position (next offset to read) if it moved."""
        self._done.add(offset)
        committable: int | None = None
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            committable = head + 1
        return committable
