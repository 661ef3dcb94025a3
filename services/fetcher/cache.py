"""Fetch a URL once while its result is fresh: reposts share media.

`ResultCache.get_or_load` returns a fresh cached outcome (a value or a refusal), joins a load
of the same key already under way (concurrent requests are coalesced into one download), or
starts one. Entries expire after a TTL and the least recently used go first once the cache
holds more than `max_bytes`.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

V = TypeVar("V")

ENTRY_OVERHEAD_BYTES = 256  # the key, the entry and the dict slot, roughly


class Lookup(Enum):
    HIT = "hit"
    COALESCED = "coalesced"
    MISS = "miss"


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V | None
    error: Exception | None
    expires_at: float
    size: int


class ResultCache(Generic[V]):
    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        size_of: Callable[[V], int],
        error_ttl_s: Callable[[Exception], float | None],
        on_lookup: Callable[[Lookup], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`error_ttl_s(exc)` says how long a failure stays cached (None: not at all);
        `on_lookup` is told how each lookup was served."""
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.error_ttl_s = error_ttl_s
        self.on_lookup = on_lookup
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        """The value for `key`; a cached or shared failure is raised again."""
        entry = self._fresh(key)
        if entry is not None:
            self.on_lookup(Lookup.HIT)
            if entry.error is not None:
                raise copy.copy(entry.error)  # a fresh exception each time: tracebacks do not pile up
            assert entry.value is not None
            return entry.value
        task = self._loading.get(key)
        if task is None:
            self.on_lookup(Lookup.MISS)
            task = asyncio.ensure_future(load())
            self._loading[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        else:
            self.on_lookup(Lookup.COALESCED)
        try:
            # shield: one waiter giving up must not cancel the download the others wait for
            return await asyncio.shield(task)
        finally:
            # A failure's traceback holds this frame: without this, frame, task and failure
            # would form a cycle that keeps the failed download's frames (a partial body, a
            # response) in memory until the garbage collector happens to run.
            del task

    def _fresh(self, key: str) -> _Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _settle(self, key: str, task: asyncio.Task[V]) -> None:
        self._loading.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            value = task.result()
            self._store(key, _Entry(value, None, self.clock() + self.ttl_s, self.size_of(value)))
        elif isinstance(error, Exception):
            ttl = self.error_ttl_s(error)
            if ttl is not None and ttl > 0:
                # a copy without traceback or cause, which would keep the failed download's frames alive
                self._store(key, _Entry(None, copy.copy(error), self.clock() + ttl, 0))

    def _store(self, key: str, entry: _Entry[V]) -> None:
        size = entry.size + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = entry
        self.bytes += size
        now = self.clock()
        # least recently used first while over the bound, and expired ones at that end anyway
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if self.bytes <= self.max_bytes and oldest.expires_at > now:
                break
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size + ENTRY_OVERHEAD_BYTES
