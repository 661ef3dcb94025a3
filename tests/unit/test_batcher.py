import asyncio
import random
from collections.abc import Sequence

from services.classifier.batcher import MicroBatcher
from services.common.errors import RecordError, RetryableError


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


class Rejecting:
    """A batch call that refuses any batch holding a bad item, as Triton refuses a request."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.calls: list[list[int]] = []

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        rejected = self.bad.intersection(items)
        if rejected:
            raise RecordError("inference_rejected", f"items {sorted(rejected)}")
        return [10 * i for i in items]


async def test_a_rejected_batch_is_bisected_down_to_the_bad_item() -> None:
    run = Rejecting(bad={5})
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, max_wait_s=0.05, max_concurrent=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)), return_exceptions=True)
    await batcher.close()
    assert run.calls[0] == list(range(8))  # one batch first, split only after it was refused
    for i, result in enumerate(results):
        if i == 5:
            assert isinstance(result, RecordError)
            assert result.reason == "inference_rejected"
            assert result.detail == "items [5]"  # the error of the call that held it alone
        else:
            assert result == 10 * i  # each good item its own result, in spite of the splits
    # halving, each refused half split in turn: 2 calls per level below the first
    assert run.calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]


async def test_every_bad_item_of_a_batch_fails_alone() -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(20):
        size = rng.randint(1, 16)
        bad = {i for i in range(size) if rng.random() < 0.3}
        run = Rejecting(bad)
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=16, max_wait_s=0.05, max_concurrent=2)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(size)), return_exceptions=True)
        await batcher.close()
        failed = {i for i, r in enumerate(results) if isinstance(r, RecordError)}
        assert failed == bad, f"seed {seed}"
        assert all(results[i] == 10 * i for i in range(size) if i not in bad), f"seed {seed}"
        assert len(run.calls) <= 2 * size - 1, f"seed {seed}"  # a full binary split at worst


async def test_an_outage_is_not_bisected() -> None:
    calls: list[list[int]] = []

    async def gone(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        raise RetryableError("Triton unavailable")

    batcher: MicroBatcher[int, int] = MicroBatcher(gone, max_batch=8, max_wait_s=0.05, max_concurrent=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)), return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, RetryableError) for r in results)
    assert calls == [list(range(8))]  # one call: the batch was not the items' fault


async def test_a_wrong_number_of_results_fails_the_items_instead_of_leaving_them_waiting() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[:-1]

    batcher: MicroBatcher[int, int] = MicroBatcher(short, max_batch=4, max_wait_s=0.05, max_concurrent=1)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True), timeout=5
    )
    await batcher.close()
    assert all(isinstance(r, RuntimeError) and "3 results for 4 items" in str(r) for r in results)
