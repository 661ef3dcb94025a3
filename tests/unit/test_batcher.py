import asyncio
from collections.abc import Sequence

from services.classifier.batcher import MicroBatcher


async def test_concurrent_submissions_share_a_batch_bounded_by_size() -> None:
    batches: list[list[int]] = []

    async def double(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [2 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(double, max_batch=4, max_wait_s=0.05, max_concurrent=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    await batcher.close()
    assert results == [2 * i for i in range(10)]
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert max(len(b) for b in batches) == 4
    assert len(batches) == 3


async def test_a_lone_item_waits_at_most_max_wait() -> None:
    async def identity(items: Sequence[int]) -> list[int]:
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(identity, max_batch=64, max_wait_s=0.01, max_concurrent=1)
    assert await asyncio.wait_for(batcher.submit(7), timeout=5) == 7
    await batcher.close()


async def test_a_failed_batch_fails_each_of_its_items() -> None:
    async def broken(items: Sequence[int]) -> list[int]:
        raise ConnectionError("server gone")

    batcher: MicroBatcher[int, int] = MicroBatcher(broken, max_batch=8, max_wait_s=0.01, max_concurrent=2)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_at_most_max_concurrent_batches_run_at_once() -> None:
    running = 0
    peak = 0

    async def slow(items: Sequence[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(slow, max_batch=1, max_wait_s=0, max_concurrent=2)
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    await batcher.close()
    assert peak == 2
