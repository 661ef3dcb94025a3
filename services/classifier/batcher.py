"""Micro-batching: single submissions gathered into batches bounded by size and by wait time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from services.common.errors import RecordError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

BatchFn = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]


class MicroBatcher(Generic[Item, Result]):
    """`await submit(item)` returns that item's result from a batched call of `run_batch`.

    A batch closes when it holds `max_batch` items or `max_wait_s` after its first item,
    whichever comes first; at most `max_concurrent` batches run at once.

    If the batch call raises `RecordError`, some item of the batch is at fault, not the batch:
    the batch is halved and each half sent again (within the batch's slot, one after the
    other), down to the items at fault, which alone get the error of the call that held them
    by themselves; the others get their results. One bad item in a batch of n costs about
    2·log2(n) more calls. Any other exception (an outage, a bug) is the whole batch's: every
    item gets it.
    """

    def __init__(
        self, run_batch: BatchFn[Item, Result], max_batch: int, max_wait_s: float, max_concurrent: int
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._slots = asyncio.Semaphore(max_concurrent)
        # A deque and one event, not an asyncio.Queue: gathering a batch then costs one wake-up
        # per batch instead of one task per item.
        self._waiting: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        if self._collector is None:
            self._collector = asyncio.create_task(self._collect_forever())
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        if self._running:
            await asyncio.wait(self._running)

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # collect the next batch only when it can be sent
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self._max_wait_s
            while len(self._waiting) < self._max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            batch = [self._waiting.popleft() for _ in range(min(self._max_batch, len(self._waiting)))]
            task = asyncio.create_task(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            await self._deliver(batch)
        finally:
            self._slots.release()

    async def _deliver(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        if all(future.done() for _, future in batch):
            return  # every submitter is gone (cancelled): nobody waits for this call
        try:
            results = await self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the batch call returned {len(results)} results for {len(batch)} items")
        except RecordError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.info(
                "batch refused for an item's fault: sending its halves apart",
                extra={"fields": {"batch_size": len(batch), "reason": exc.reason, "detail": exc.detail}},
            )
            middle = len(batch) // 2
            await self._deliver(batch[:middle])
            await self._deliver(batch[middle:])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting submitter
            _fail(batch, exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def _fail(batch: Sequence[tuple[object, asyncio.Future[Result]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
