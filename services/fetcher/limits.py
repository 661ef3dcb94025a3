"""Bounds the fetcher puts on itself: requests per host, and bytes held in memory (bodies, decodes)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
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


class TimeBudget:
    """Seconds one URL may spend with servers, across its redirects, retries and the backoff
    between them, so a URL ends within one deadline however its hops and tries add up. Waits
    for a connection slot are not spent: they measure our own queue, not the server."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._spent = 0.0

    @property
    def left(self) -> float:
        return self.seconds - self._spent

    @contextmanager
    def spending(self) -> Iterator[None]:
        started = self._clock()
        try:
            yield
        finally:
            self._spent += self._clock() - started


class ByteBudget:
    """Bytes in memory at once, shared by all the work that holds them: bodies of downloads,
    counted as they arrive and held until decoded, or the estimated memory of decodes under way.
    Memory then does not grow with the amount of work in flight.

    Each user draws through its own `Allowance`. A download takes a chunk at a time, and a chunk
    that does not fit waits. Bodies held part-way could then wait on each other forever, so one
    download at a time may overdraw: the waiting one that holds the most, which is the closest
    to finishing or to its size cap. It finishes, gives everything back, and the others go on.
    Memory therefore stays below `limit` plus one body (`FETCHER_MAX_BYTES`).

    A first take (an allowance holding nothing yet, such as a decode reserving its whole
    estimate at once) never overdraws, must fit in `limit`, and is served in arrival order: a
    large one waiting is not passed by smaller first takes behind it, which would otherwise
    keep it waiting as long as small ones keep coming.

    Everything runs on the event loop but `take_now`, which a decode worker calls to reserve its
    decode's memory without a trip back to the loop when it fits at once; a lock keeps the
    accounting whole between the two threads.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: dict[Allowance, tuple[int, asyncio.Future[None]]] = {}
        self._overdraft: Allowance | None = None
        self._lock = threading.Lock()

    def allowance(self) -> Allowance:
        return Allowance(self)

    async def reserve(self, size: int) -> Allowance:
        """A new allowance holding `size` bytes, once they fit."""
        allowance = Allowance(self)
        await allowance.take(size)
        return allowance

    @property
    def waiters(self) -> int:
        return len(self._waiting)

    def take_now(self, allowance: Allowance, size: int) -> bool:
        """From any thread: give an allowance holding nothing `size` bytes if they fit now and
        no first take is waiting before it; False (nothing taken) leaves it to `take`."""
        if allowance.held or size > self.limit:
            return False
        with self._lock:
            # closed: its owner gave up (a cancelled download) while the worker was reading
            if allowance.closed or self.used + size > self.limit or self._first_takes_waiting(allowance):
                return False
            self._grant(allowance, size)
            return True

    async def _take(self, allowance: Allowance, size: int) -> None:
        if allowance.held == 0 and size > self.limit:
            raise ValueError(f"{size} bytes can never fit in a budget of {self.limit}")
        with self._lock:
            if (self.used + size <= self.limit and not self._first_takes_waiting(allowance)) or self._may_overdraw(
                allowance
            ):
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
            with self._lock:
                self._waiting.pop(allowance, None)
            raise

    def _release(self, allowance: Allowance) -> None:
        with self._lock:
            allowance.closed = True
            if not allowance.held:
                return
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

    def _first_takes_waiting(self, allowance: Allowance) -> bool:
        """Whether a first take must queue behind first takes already waiting."""
        return allowance.held == 0 and any(a.held == 0 and not f.done() for a, (_, f) in self._waiting.items())

    def _wake(self) -> None:
        """Grant what now fits, in order; on the event loop, with the lock held."""
        first_take_blocked = False
        for allowance, (size, future) in list(self._waiting.items()):
            if future.done():  # cancelled; its task leaves the queue when it resumes
                continue
            first = allowance.held == 0
            fits = self.used + size <= self.limit and not (first and first_take_blocked)
            if fits or self._may_overdraw(allowance):
                del self._waiting[allowance]
                self._grant(allowance, size)
                future.set_result(None)
            elif first:
                first_take_blocked = True  # the ones behind wait their turn


class Allowance:
    """One user's share of a `ByteBudget`: `take(n)` before keeping n more bytes, `release()`
    (or the end of a `with` block) once they are no longer needed (idempotent, and final)."""

    __slots__ = ("_budget", "closed", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0
        self.closed = False

    async def take(self, size: int) -> None:
        await self._budget._take(self, size)

    def take_now(self, size: int) -> bool:
        """`ByteBudget.take_now` for this allowance: safe from a worker thread."""
        return self._budget.take_now(self, size)

    def release(self) -> None:
        if self.held or not self.closed:
            self._budget._release(self)

    def __enter__(self) -> Allowance:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
