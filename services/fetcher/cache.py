"""Fetch a URL once while its result is fresh: reposts share media.

`ResultCache.get_or_load` returns a fresh cached outcome (a value or a refusal), joins a load
of the same key already under way (concurrent requests are coalesced into one download), or
starts one. Entries expire after a TTL and the least recently used go first once the cache
holds more than `max_bytes`. A waiter that gives up leaves the download to the others, and
it runs on even when none is left: its outcome is kept for the next request. The coalescing,
expiry and eviction are `services/common/cache.py`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from services.common.cache import CoalescingCache, same
from services.common.cache import Lookup as Lookup

V = TypeVar("V")

ENTRY_OVERHEAD_BYTES = 256  # the key, the entry and the dict slot, roughly


class ResultCache(CoalescingCache[str, V, V]):
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
        """An entry costs `size_of(value)` and ENTRY_OVERHEAD_BYTES; `error_ttl_s(exc)` says how
        long a failure stays cached (None: not at all); `on_lookup` is told how each lookup was
        served."""
        super().__init__(
            ttl_s=ttl_s,
            max_cost=max_bytes,
            keep=same,
            serve=same,
            cost_of=size_of,
            entry_overhead=ENTRY_OVERHEAD_BYTES,
            error_ttl_s=error_ttl_s,
            on_lookup=on_lookup,
            clock=clock,
        )

    @property
    def max_bytes(self) -> int:
        return self.max_cost

    @property
    def bytes(self) -> int:
        """Held by the entries, overhead included."""
        return self.cost
