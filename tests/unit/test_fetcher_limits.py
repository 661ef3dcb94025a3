"""The fetcher's own bounds: requests per host and in all, bytes of bodies in memory."""

from __future__ import annotations

import asyncio

import pytest

from services.fetcher.limits import ByteBudget, HostLimiter


async def test_per_host_and_total_slots() -> None:
    limiter = HostLimiter(per_host=2, total=3)
    active: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0, "all": 0}
    gate = asyncio.Event()

    async def request(host: str) -> None:
        async with limiter.hold(host):
            active[host] += 1
            peak[host] = max(peak[host], active[host])
            peak["all"] = max(peak["all"], sum(active.values()))
            await gate.wait()
            active[host] -= 1

    tasks = [asyncio.create_task(request(h)) for h in "aaaabbbb"]
    for _ in range(5):
        await asyncio.sleep(0)
    assert active == {"a": 2, "b": 1}  # two of a's, then b's first takes the last of the three
    gate.set()
    await asyncio.gather(*tasks)
    assert peak["a"] == 2
    assert peak["b"] <= 2
    assert peak["all"] == 3
    assert len(limiter) == 0


async def test_a_cancelled_wait_leaves_no_host_entry() -> None:
    limiter = HostLimiter(per_host=1, total=10)
    gate = asyncio.Event()

    async def hold() -> None:
        async with limiter.hold("a"):
            await gate.wait()

    holder = asyncio.create_task(hold())
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    await holder
    assert len(limiter) == 0


async def test_a_chunk_that_does_not_fit_waits_for_room() -> None:
    budget = ByteBudget(100)
    first, second = budget.allowance(), budget.allowance()
    await first.take(80)
    waiting = asyncio.create_task(second.take(30))
    await asyncio.sleep(0)
    assert not waiting.done()
    first.release()
    await waiting
    assert budget.used == 30
    assert (first.held, second.held) == (0, 30)


async def test_bodies_held_part_way_never_wait_on_each_other_forever() -> None:
    """Three downloads of 60 bytes in 10-byte chunks through a budget of 100: without an
    overdraft each would hold about a third and wait for the others forever."""
    budget = ByteBudget(100)
    peak = 0

    async def download() -> None:
        nonlocal peak
        allowance = budget.allowance()
        for _ in range(6):
            await allowance.take(10)
            peak = max(peak, budget.used)
            await asyncio.sleep(0)
        allowance.release()

    async with asyncio.timeout(5):
        await asyncio.gather(*(download() for _ in range(3)))
    assert budget.used == 0
    assert budget.waiters == 0
    assert 100 < peak <= 100 + 60  # the limit, plus at most one body overdrawn


async def test_one_download_at_a_time_overdraws_and_never_a_fresh_one() -> None:
    budget = ByteBudget(100)
    small, large, fresh = budget.allowance(), budget.allowance(), budget.allowance()
    await small.take(30)
    await large.take(60)
    fresh_wait = asyncio.create_task(fresh.take(20))
    await asyncio.sleep(0)
    assert not fresh_wait.done()  # holds nothing yet: waits for room
    await small.take(20)  # holds part of a body and nobody overdraws: it may
    assert budget.used == 110
    large_wait = asyncio.create_task(large.take(20))
    await asyncio.sleep(0)
    assert not large_wait.done()  # one overdraft at a time
    small.release()
    await asyncio.gather(fresh_wait, large_wait)  # both fit in what small gave back
    assert budget.used == 100


async def test_the_overdraft_goes_to_the_waiting_download_holding_most() -> None:
    budget = ByteBudget(100)
    a, b, c = budget.allowance(), budget.allowance(), budget.allowance()
    await a.take(10)
    await b.take(50)
    await c.take(40)
    await c.take(5)  # c overdraws
    a_wait = asyncio.create_task(a.take(50))
    b_wait = asyncio.create_task(b.take(50))
    await asyncio.sleep(0)
    c.release()  # neither fits in what is left: b, which holds more, overdraws
    await b_wait
    assert not a_wait.done()
    b.release()
    await a_wait
    assert budget.used == 60


async def test_a_cancelled_wait_leaves_the_queue() -> None:
    budget = ByteBudget(100)
    holder, other = budget.allowance(), budget.allowance()
    await holder.take(100)
    waiting = asyncio.create_task(other.take(10))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.waiters == 0
    holder.release()
    holder.release()  # twice is harmless
    assert budget.used == 0
    assert other.held == 0


async def test_a_reservation_waits_until_its_whole_size_fits() -> None:
    budget = ByteBudget(100)
    running = await budget.reserve(70)
    waiting = asyncio.create_task(budget.reserve(40))
    await asyncio.sleep(0)
    assert not waiting.done()  # a first take never overdraws, whatever it is for
    running.release()
    with await waiting as reserved:
        assert (reserved.held, budget.used) == (40, 40)
    assert budget.used == 0


async def test_a_large_reservation_is_not_passed_by_smaller_ones_behind_it() -> None:
    """Decodes reserve their whole estimate at once: a large one waiting must get its turn,
    not wait for as long as small ones keep arriving and fitting in what is left."""
    budget = ByteBudget(100)
    running = await budget.reserve(60)
    large = asyncio.create_task(budget.reserve(80))
    await asyncio.sleep(0)
    small = asyncio.create_task(budget.reserve(10))  # would fit now, but the large one came first
    await asyncio.sleep(0)
    assert not large.done()
    assert not small.done()
    running.release()  # the large one first; the small one fits beside it
    granted_large, granted_small = await asyncio.gather(large, small)
    assert (granted_large.held, granted_small.held, budget.used) == (80, 10, 90)
    granted_large.release()
    granted_small.release()
    assert budget.used == 0
    assert budget.waiters == 0


async def test_a_download_part_way_is_not_held_up_by_a_waiting_reservation() -> None:
    """Chunks of a body held part-way still fit or overdraw past a first take that waits,
    so bodies cannot wait on each other forever behind it."""
    budget = ByteBudget(100)
    body = budget.allowance()
    await body.take(50)
    other = await budget.reserve(40)
    large = asyncio.create_task(budget.reserve(90))
    await asyncio.sleep(0)
    await body.take(30)  # overdraws: it holds part of a body
    assert not large.done()
    body.release()
    other.release()
    (await large).release()
    assert budget.used == 0


async def test_a_first_take_larger_than_the_budget_is_an_error_not_a_wait() -> None:
    budget = ByteBudget(100)
    with pytest.raises(ValueError, match="can never fit"):
        await budget.reserve(101)
    assert budget.used == 0
    assert budget.waiters == 0


async def test_a_decode_worker_takes_its_memory_at_once_only_when_it_fits_in_turn() -> None:
    budget = ByteBudget(100)
    worker = budget.allowance()
    assert worker.take_now(60)
    assert budget.used == 60
    assert not budget.allowance().take_now(50)  # does not fit
    waiting = asyncio.create_task(budget.allowance().take(50))
    await asyncio.sleep(0)
    assert not budget.allowance().take_now(10)  # fits, but a first take waits before it
    worker.release()
    await waiting
    assert budget.used == 50


async def test_a_worker_cannot_take_for_an_allowance_its_owner_gave_up() -> None:
    """The download was cancelled while its worker read the header: what the worker would take
    then could never be given back."""
    budget = ByteBudget(100)
    allowance = budget.allowance()
    allowance.release()
    assert not allowance.take_now(10)
    assert budget.used == 0


async def test_workers_and_the_event_loop_share_the_budget_without_losing_count() -> None:
    """Decode threads take at once while the loop takes, waits and releases: the budget never
    goes over its limit and ends empty."""
    budget = ByteBudget(1000)
    loop = asyncio.get_running_loop()
    highest = 0

    def worker(n: int) -> int:
        taken = 0
        for i in range(2000):
            allowance = budget.allowance()
            if allowance.take_now(10 + (n + i) % 50):
                taken += 1
                loop.call_soon_threadsafe(allowance.release)
        return taken

    async def on_the_loop() -> None:
        nonlocal highest
        for i in range(500):
            with await budget.reserve(10 + i % 90):
                highest = max(highest, budget.used)
                await asyncio.sleep(0)

    threads = [loop.run_in_executor(None, worker, n) for n in range(3)]
    await on_the_loop()
    taken = await asyncio.gather(*threads)
    for _ in range(100):  # the releases the workers scheduled
        if budget.used == 0:
            break
        await asyncio.sleep(0.01)
    assert sum(taken) > 0
    assert highest <= 1000
    assert budget.used == 0
