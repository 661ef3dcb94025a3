"""Fan-out of newly stored predictions to the open live-update streams.

Each stream has a bounded queue. A stream that falls that far behind is closed rather
than slowing the sink down or growing without bound; the browser's EventSource then
reconnects and the page reloads the recent predictions.

A stream holds its slot of `max_subscriptions` until its handler has ended, not only until
its queue is closed: a client that stops reading leaves its handler blocked in a write,
which `write_timeout_s` bounds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .store import Prediction, matches


class TooManyStreams(Exception):
    """The configured number of live streams is open already."""


#: longest a write to one stream may block (its client's socket buffers full) before the connection is dropped
DEFAULT_WRITE_TIMEOUT_S = 10.0


@dataclass(eq=False)
class Subscription:
    hashtag: str | None
    min_score: float
    queue: asyncio.Queue[Prediction | None] = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    #: no more predictions: the stream fell behind, or the hub is closing
    closed: bool = False

    async def next(self, timeout_s: float) -> Prediction | None:
        """The next matching prediction; None on timeout. Raises EOFError once the stream is closed."""
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None
        if item is None:
            raise EOFError
        return item

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Make room for the end marker: a closed stream's backlog is of no use.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveHub:
    def __init__(self, max_subscriptions: int, write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S) -> None:
        self.max_subscriptions = max_subscriptions
        self.write_timeout_s = write_timeout_s
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def __len__(self) -> int:
        """Streams whose handlers have not ended: each holds a slot."""
        return len(self._subscriptions)

    def behind(self) -> int:
        """Streams closed for falling behind whose handlers have not ended yet."""
        return sum(1 for subscription in self._subscriptions if subscription.closed)

    def subscribe(self, hashtag: str | None, min_score: float) -> Subscription:
        if self._closed or len(self._subscriptions) >= self.max_subscriptions:
            raise TooManyStreams
        subscription = Subscription(hashtag, min_score)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """The stream's handler has ended: its slot is free."""
        self._subscriptions.discard(subscription)

    def publish(self, item: Prediction) -> None:
        """Hand `item` to every stream whose filter it passes; never blocks, never raises."""
        for subscription in self._subscriptions:
            if subscription.closed or not matches(item, subscription.hashtag, subscription.min_score):
                continue
            try:
                subscription.queue.put_nowait(item)
            except asyncio.QueueFull:
                subscription.close()

    def close(self) -> None:
        """End every stream and refuse new ones (at shutdown)."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
