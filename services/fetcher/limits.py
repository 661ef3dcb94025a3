"""Bounds the fetcher puts on itself: requests per host, and bytes of bodies held in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class HostLimiter:
    """At most `per_host` requests to one host at a time, and at most `total` in all.

    The wait happens before a request starts, so its timeouts measure time spent with the
    server, not time queued behind other downloads. A host's entry lives only while someone
    uses or waits for it, so the table stays as small as the set of hosts in flight.
    """

    def __init__(self, per_host: int, total: int) -> None:
        self.per_host = per_host
        self._total = asyncio.Semaphore(total)
        self._hosts: dict[str, _HostSlot] = {}

    def __len__(self) -> int:
        return len(self._hosts)

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        slot = self._hosts.get(host)
        if slot is None:
            slot = self._hosts[host] = _HostSlot(asyncio.Semaphore(self.per_host))
        slot.users += 1
        try:
            async with slot.semaphore, self._total:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._hosts[host]


class ByteBudget:
    """Bytes of downloaded bodies in memory at once, counted as they arrive and held until the
    body is decoded, so memory does not grow with the number of downloads in flight.

    Each download draws from the budget through its own `Allowance`, a chunk at a time; a chunk
    that does not fit waits. Bodies held part-way could then wait on each other forever, so one
    download at a time may overdraw: the waiting one that holds the most, which is the closest
    to finishing or to its size cap. It finishes, gives everything back, and the others go on.
    Memory therefore stays below `limit` plus one body (`FETCHER_MAX_BYTES`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: dict[Allowance, tuple[int, asyncio.Future[None]]] = {}
        self._overdraft: Allowance | None = None

    def allowance(self) -> Allowance:
        return Allowance(self)

    @property
    def waiters(self) -> int:
        return len(self._waiting)

    async def _take(self, allowance: Allowance, size: int) -> None:
        if self.used + size <= self.limit or self._may_overdraw(allowance):
            self._grant(allowance, size)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[allowance] = (size, future)
        self._wake()  # we may be the one to overdraw now
        try:
            await future
        except asyncio.CancelledError:
            # Still queued: leave. Already granted (a grant leaves the queue): the bytes are in
            # `allowance.held`, and the caller's release gives them back.
            if allowance in self._waiting:
                del self._waiting[allowance]
            raise

    def _release(self, allowance: Allowance) -> None:
        self.used -= allowance.held
        assert self.used >= 0, "released more than taken"
        allowance.held = 0
        if self._overdraft is allowance:
            self._overdraft = None
        self._wake()

    def _may_overdraw(self, allowance: Allowance) -> bool:
        if self._overdraft is None and allowance.held > 0:
            largest = max((a for a in self._waiting if a.held > 0), key=lambda a: a.held, default=None)
            if largest is None or largest.held <= allowance.held:
                self._overdraft = allowance
        return self._overdraft is allowance

    def _grant(self, allowance: Allowance, size: int) -> None:
        self.used += size
        allowance.held += size

    def _wake(self) -> None:
        for allowance, (size, future) in list(self._waiting.items()):
            if future.done():  # cancelled; its task leaves the queue when it resumes
                continue
            if self.used + size <= self.limit or self._may_overdraw(allowance):
                del self._waiting[allowance]
                self._grant(allowance, size)
                future.set_result(None)


class Allowance:
    """One download's share of a `ByteBudget`: `take(n)` before keeping n more bytes,
    `release()` once the body is no longer needed (idempotent)."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    async def take(self, size: int) -> None:
        await self._budget._take(self, size)

    def release(self) -> None:
        if self.held:
            self._budget._release(self)
