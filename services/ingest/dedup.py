"""Drop posts delivered twice: the ids of the most recent posts, in a bounded window.

After a reconnect (and always with `backfill_minutes`) X may deliver a post again; the
window only needs to span a reconnect, so it is bounded by count, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, tweet_id: str) -> bool:
        """Remember `tweet_id`; False when it is already in the window (a duplicate)."""
        if tweet_id in self._ids:
            self._ids.move_to_end(tweet_id)
            return False
        self._ids[tweet_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def forget(self, tweet_id: str) -> None:
        """Take an id out again, so a post whose delivery failed is produced when it comes back."""
        self._ids.pop(tweet_id, None)

    def __contains__(self, tweet_id: object) -> bool:
        return tweet_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
