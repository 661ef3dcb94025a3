"""Group commit: concurrent writes wait briefly and are committed together, one synced transaction for many.

A caller submits one item and awaits its own outcome, which it gets only once the
transaction holding the item has committed (so the stream loop still commits an offset
only after the store has the row). While a batch commits, new items queue; the next batch
takes up to `max_batch` of them as soon as a writer is free. A batch waits up to
`max_wait_s`, counted from its oldest item, for company; items that queued behind a commit
have waited that long already.

Errors stay with their item: the commit reports an outcome per item, and a batch that fails
as a whole for any other reason than the database's state (a row that breaks the
transaction) is tried again one item at a time, so a bad item fails alone and its
neighbours are stored. A `RetryableError` (the database unreachable, locked, read-only) is
the database's, not a row's: every item of the batch gets it and its caller retries later,
rather than each item waiting out the same outage alone.

The queue holds what callers are awaiting, so it is bounded by them (the stream loop's
in-flight window); at most `concurrency` batches commit at once, and one is gathered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import RetryableError

from . import metrics

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: commits a batch in one transaction: one outcome per item, in order (a result, or that item's
#: error), or raises when the transaction as a whole failed
CommitBatch = Callable[[Sequence[Item]], Awaitable[Sequence["Result | BaseException"]]]


@dataclass(frozen=True)
class GroupPolicy:
    #: items in one transaction at most
    max_batch: int = 64
    #: how long the first item of a batch waits for others when no batch is being gathered
    max_wait_s: float = 0.002
    #: batches committed at once (SQLite: one writer; PostgreSQL: up to its connections)
    concurrency: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_s < 0 or self.concurrency < 1:
            raise ValueError(f"max_batch and concurrency must be at least 1, max_wait_s not negative: {self}")


@dataclass(eq=False)
class _Waiting(Generic[Item, Result]):
    item: Item
    outcome: asyncio.Future[Result]
    since: float


DEFAULT_POLICY = GroupPolicy()


class GroupCommit(Generic[Item, Result]):
    def __init__(self, commit: CommitBatch[Item, Result], store: str, policy: GroupPolicy = DEFAULT_POLICY) -> None:
        self._commit = commit
        self.policy = policy
        self._rows = metrics.COMMIT_ROWS.labels(store)
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._arrived = asyncio.Event()
        self._writers: set[asyncio.Task[None]] = set()
        #: writers gathering a batch (at most one: it takes what arrives meanwhile)
        self._gathering = 0
        self._closed = False

    async def submit(self, item: Item) -> Result:
        """Commit `item` with whatever else is waiting; its result once committed, or its error."""
        if self._closed:
            raise RuntimeError("the store is closed")
        outcome: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(item, outcome, time.monotonic()))
        self._arrived.set()
        self._start_writer()
        # A caller cancelled while its item waits leaves it behind (its future is done); one
        # cancelled while its batch commits leaves the row stored, which is harmless.
        return await outcome

    async def close(self) -> None:
        """Commit what was submitted, then refuse more."""
        self._closed = True
        while self._writers:
            await asyncio.gather(*self._writers)

    def _start_writer(self) -> None:
        if self._queue and not self._gathering and len(self._writers) < self.policy.concurrency:
            self._gathering += 1
            self._writers.add(asyncio.get_running_loop().create_task(self._write_batches(), name="group-commit"))

    async def _write_batches(self) -> None:
        """Gather a batch and commit it, while items wait and no other writer gathers them.
        Starts counted as gathering."""
        batch: list[_Waiting[Item, Result]] = []
        try:
            while True:
                await self._gather()
                batch = self._take()
                self._gathering -= 1
                self._start_writer()  # what is left may go in another batch at once
                if batch:
                    await self._write(batch)
                batch = []
                if not self._queue or self._gathering:
                    return
                self._gathering += 1
        except BaseException as exc:  # cancelled, or a bug here: no caller may wait forever
            stopped = RuntimeError(f"the group commit stopped: {type(exc).__name__}")
            for waiting in [*batch, *self._queue]:
                _settle(waiting, stopped)
            self._queue.clear()
            raise
        finally:
            # Now, not in a done callback: an item submitted before that ran would find no room
            # for a writer and none left to take it.
            current = asyncio.current_task()
            if current is not None:
                self._writers.discard(current)

    async def _gather(self) -> None:
        """Wait for company until the batch is full or its oldest item has waited `max_wait_s`."""
        if not self._queue:
            return
        deadline = self._queue[0].since + self.policy.max_wait_s
        while len(self._queue) < self.policy.max_batch and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Waiting[Item, Result]]:
        batch: list[_Waiting[Item, Result]] = []
        while self._queue and len(batch) < self.policy.max_batch:
            waiting = self._queue.popleft()
            if not waiting.outcome.done():  # its caller gave up waiting
                batch.append(waiting)
        return batch

    async def _write(self, batch: list[_Waiting[Item, Result]]) -> None:
        try:
            outcomes = await self._commit([w.item for w in batch])
        except RetryableError as exc:
            for waiting in batch:
                _settle(waiting, exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the item's caller, or retried item by item
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            log.warning(
                "a grouped commit failed; committing its items one by one",
                extra={"fields": {"items": len(batch), "error": f"{type(exc).__name__}: {exc}"}},
            )
            for waiting in batch:
                await self._write([waiting])
            return
        if len(outcomes) != len(batch):
            error = RuntimeError(f"a commit of {len(batch)} items reported {len(outcomes)} outcomes")
            outcomes = [error] * len(batch)
        self._rows.observe(len(batch))
        for waiting, outcome in zip(batch, outcomes, strict=True):
            _settle(waiting, outcome)


def _settle(waiting: _Waiting[Item, Result], outcome: Result | BaseException) -> None:
    if waiting.outcome.done():
        return
    if isinstance(outcome, BaseException):
        waiting.outcome.set_exception(outcome)
    else:
        waiting.outcome.set_result(outcome)
