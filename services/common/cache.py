"""Load a key's value once while it is fresh: concurrent requests for it share one load.

`CoalescingCache.get` returns a fresh kept outcome, joins a load of the same key already under
way, or starts one, and says which (`Lookup`). An outcome is kept for `ttl_s`; each entry costs
`cost_of(kept) + entry_overhead` against `max_cost`, and the least recently used go first once
the cache holds more. The fetcher keeps a URL's decoded image, bounded by bytes, and remembers
refusals (`services/fetcher/cache.py`); the classifier keeps an image's scores, bounded by
entries, and cancels an inference nobody waits for any more (`services/classifier/prediction_cache.py`).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from enum import Enum
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
S = TypeVar("S")


class Lookup(Enum):
    HIT = "hit"  # a kept outcome: no load
    COALESCED = "coalesced"  # joined a load of the same key under way
    MISS = "miss"  # started a load


class _Kept(Generic[S]):
    __slots__ = ("cost", "expires_at", "value")

    def __init__(self, value: S, expires_at: float, cost: int) -> None:
        self.value = value
        self.expires_at = expires_at
        self.cost = cost


class _Failed:
    __slots__ = ("cost", "error", "expires_at")

    def __init__(self, error: Exception, expires_at: float, cost: int) -> None:
        self.error = error
        self.expires_at = expires_at
        self.cost = cost


class _Load(Generic[V]):
    """A load under way and how many callers wait on it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Future[V]) -> None:
        self.task = task
        self.waiters = 0


class CoalescingCache(Generic[K, V, S]):
    def __init__(
        self,
        *,
        ttl_s: float,
        max_cost: int,
        keep: Callable[[V], S],
        serve: Callable[[S], V],
        cost_of: Callable[[S], int] = lambda _: 1,
        entry_overhead: int = 0,
        error_ttl_s: Callable[[Exception], float | None] | None = None,
        cancel_when_abandoned: bool = False,
        on_lookup: Callable[[Lookup], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`keep(value)` is what of a loaded value is kept, `serve(kept)` what a hit returns;
        `error_ttl_s(exc)` says how long a failure stays kept (None, or no function: not at all);
        with `cancel_when_abandoned` the last waiter to be cancelled cancels the load, otherwise
        the load runs on; `on_lookup` is told how each lookup was served."""
        self.ttl_s = ttl_s
        self.max_cost = max_cost
        self.keep = keep
        self.serve = serve
        self.cost_of = cost_of
        self.entry_overhead = entry_overhead
        self.error_ttl_s = error_ttl_s
        self.cancel_when_abandoned = cancel_when_abandoned
        self.on_lookup = on_lookup
        self.clock = clock
        self.cost = 0  # of the entries held
        self._entries: OrderedDict[K, _Kept[S] | _Failed] = OrderedDict()
        self._loading: dict[K, _Load[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value for `key`; a kept or shared failure is raised again."""
        value, _ = await self.get(key, load)
        return value

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> tuple[V, Lookup]:
        """The value for `key` and how it was served; a kept or shared failure is raised again."""
        entry = self._fresh(key)
        if entry is not None:
            self.on_lookup(Lookup.HIT)
            if isinstance(entry, _Failed):
                raise copy.copy(entry.error)  # a fresh exception each time: tracebacks do not pile up
            return self.serve(entry.value), Lookup.HIT
        under_way = self._loading.get(key)
        if under_way is None:
            lookup = Lookup.MISS
            self.on_lookup(lookup)
            under_way = self._loading[key] = _Load(asyncio.ensure_future(load()))
            under_way.task.add_done_callback(lambda done: self._settle(key, done))
        else:
            lookup = Lookup.COALESCED
            self.on_lookup(lookup)
        under_way.waiters += 1
        task = under_way.task
        try:
            # shield: one waiter leaving must not cancel the load the others wait for
            return await asyncio.shield(task), lookup
        except asyncio.CancelledError:
            if self.cancel_when_abandoned and not task.done() and under_way.waiters == 1:
                # the last waiter leaves: no new one may join a load that is being cancelled
                if self._loading.get(key) is under_way:
                    del self._loading[key]
                task.cancel()
            raise
        finally:
            under_way.waiters -= 1
            # A failure's traceback holds this frame: without this, frame, task and failure would
            # form a cycle that keeps the failed load's frames (a partial body, a batch's arrays)
            # in memory until the garbage collector happens to run.
            del task, under_way

    def _fresh(self, key: K) -> _Kept[S] | _Failed | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _settle(self, key: K, task: asyncio.Future[V]) -> None:
        under_way = self._loading.get(key)
        if under_way is not None and under_way.task is task:
            del self._loading[key]
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            kept = self.keep(task.result())
            self._store(key, _Kept(kept, self.clock() + self.ttl_s, self.cost_of(kept) + self.entry_overhead))
        elif self.error_ttl_s is not None and isinstance(error, Exception):
            ttl = self.error_ttl_s(error)
            if ttl is not None and ttl > 0:
                # a copy without traceback or cause, which would keep the failed load's frames alive
                self._store(key, _Failed(copy.copy(error), self.clock() + ttl, self.entry_overhead))

    def _store(self, key: K, entry: _Kept[S] | _Failed) -> None:
        if entry.cost > self.max_cost:
            return
        self._drop(key)
        self._entries[key] = entry
        self.cost += entry.cost
        now = self.clock()
        # least recently used first while over the bound, and expired ones at that end anyway
        while self._entries:
            oldest_key, oldest = next(iter(self._entries.items()))
            if self.cost <= self.max_cost and oldest.expires_at > now:
                break
            self._drop(oldest_key)

    def _drop(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.cost -= entry.cost


def same(value: V) -> V:
    """`keep` and `serve` of a cache that keeps and serves the loaded value itself."""
    return value
