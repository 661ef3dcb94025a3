"""Group commit on its own: batching, bounds, errors and cancellation, with a commit that records
what it was given. The stores' tests (test_store_contract.py) run it on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from services.common.errors import RetryableError
from services.sink.group_commit import GroupCommit, GroupPolicy

WAIT_S = 10  # for an outcome that must come; generous, a busy machine is slow


class Refused(ValueError):
    pass


@dataclass
class Database:
    """Commits batches of ints: a negative one is refused alone (as a row in a savepoint);
    `breaking` ones fail the whole transaction (as a row does on PostgreSQL); `down` fails
    everything as the database's fault."""

    committed: list[list[int]] = field(default_factory=list)
    breaking: set[int] = field(default_factory=set)
    down: bool = False
    delay_s: float = 0.0
    in_flight: int = 0
    most_in_flight: int = 0

    async def commit(self, items: Sequence[int]) -> list[int | BaseException]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.down:
                raise RetryableError("the database is down")
            if self.breaking & set(items):
                raise Refused(f"{sorted(self.breaking & set(items))} broke the transaction")
            self.committed.append(list(items))
            return [Refused(f"{i} refused") if i < 0 else i * 10 for i in items]
        finally:
            self.in_flight -= 1

    @property
    def items(self) -> list[int]:
        return [i for batch in self.committed for i in batch if i >= 0]


def group(db: Database, **policy: float) -> GroupCommit[int, int]:
    return GroupCommit(db.commit, "test", GroupPolicy(**policy))  # type: ignore[arg-type]


async def test_concurrent_items_are_committed_together_and_each_caller_gets_its_own_result() -> None:
    db = Database(delay_s=0.01)
    commits = group(db, max_batch=64)
    results = await asyncio.wait_for(asyncio.gather(*(commits.submit(i) for i in range(100))), WAIT_S)
    assert results == [i * 10 for i in range(100)]
    assert sorted(db.items) == list(range(100))
    assert len(db.committed) <= 3  # 64 at most, then what queued behind them
    assert max(len(batch) for batch in db.committed) == 64


async def test_an_outcome_comes_only_once_its_batch_has_committed() -> None:
    db = Database(delay_s=0.05)
    commits = group(db)
    pending = [asyncio.ensure_future(commits.submit(i)) for i in range(5)]
    await asyncio.sleep(0.02)  # the batch is committing
    assert not any(p.done() for p in pending)
    assert await asyncio.wait_for(asyncio.gather(*pending), WAIT_S) == [0, 10, 20, 30, 40]
    assert db.committed == [[0, 1, 2, 3, 4]]


async def test_items_submitted_one_after_another_are_each_committed() -> None:
    """Each submit comes as the previous writer ends: one must always be there to take it."""
    db = Database()
    commits = group(db, max_wait_s=0)
    async with asyncio.timeout(WAIT_S):  # not wait_for: its task would submit a loop iteration later
        for i in range(200):
            assert await commits.submit(i) == i * 10
    assert db.committed == [[i] for i in range(200)]


async def test_a_lone_item_does_not_wait_for_company_that_never_comes() -> None:
    db = Database()
    commits = group(db, max_wait_s=0.05)
    assert await asyncio.wait_for(commits.submit(7), WAIT_S) == 70
    assert db.committed == [[7]]


async def test_an_item_refused_alone_fails_alone() -> None:
    db = Database()
    commits = group(db)
    outcomes = await asyncio.gather(*(commits.submit(i) for i in (1, -2, 3)), return_exceptions=True)
    assert outcomes[0] == 10
    assert isinstance(outcomes[1], Refused)
    assert outcomes[2] == 30
    assert db.committed == [[1, -2, 3]]


async def test_an_item_that_breaks_its_batch_fails_alone_and_its_neighbours_are_committed() -> None:
    db = Database(breaking={5})
    commits = group(db)
    outcomes = await asyncio.gather(*(commits.submit(i) for i in range(8)), return_exceptions=True)
    assert isinstance(outcomes[5], Refused)
    assert [o for n, o in enumerate(outcomes) if n != 5] == [0, 10, 20, 30, 40, 60, 70]
    assert db.committed == [[i] for i in range(8) if i != 5]  # the batch failed, then one by one


async def test_when_the_database_is_down_every_item_of_the_batch_is_told_so_at_once() -> None:
    db = Database(down=True)
    commits = group(db)
    outcomes = await asyncio.gather(*(commits.submit(i) for i in range(8)), return_exceptions=True)
    assert all(isinstance(o, RetryableError) for o in outcomes)
    assert db.committed == []
    db.down = False
    assert await asyncio.gather(*(commits.submit(i) for i in range(8))) == [i * 10 for i in range(8)]


async def test_batches_are_bounded_in_size_and_in_how_many_commit_at_once() -> None:
    db = Database(delay_s=0.02)
    commits = group(db, max_batch=4, concurrency=3)
    results = await asyncio.wait_for(asyncio.gather(*(commits.submit(i) for i in range(40))), WAIT_S)
    assert results == [i * 10 for i in range(40)]
    assert max(len(batch) for batch in db.committed) == 4
    assert db.most_in_flight == 3


async def test_an_item_whose_caller_gave_up_before_its_batch_is_not_committed() -> None:
    db = Database(delay_s=0.05)
    commits = group(db, max_batch=1)
    first = asyncio.ensure_future(commits.submit(1))
    second = asyncio.ensure_future(commits.submit(2))
    await asyncio.sleep(0.01)  # the first commits; the second waits
    second.cancel()
    assert await asyncio.wait_for(first, WAIT_S) == 10
    assert await asyncio.wait_for(commits.submit(3), WAIT_S) == 30
    assert db.committed == [[1], [3]]


async def test_close_commits_what_was_submitted_then_refuses_more() -> None:
    db = Database(delay_s=0.01)
    commits = group(db)
    pending = [asyncio.ensure_future(commits.submit(i)) for i in range(10)]
    await asyncio.sleep(0)
    await asyncio.wait_for(commits.close(), WAIT_S)
    assert [p.result() for p in pending] == [i * 10 for i in range(10)]
    with pytest.raises(RuntimeError, match="closed"):
        await commits.submit(11)


@pytest.mark.parametrize("policy", [{"max_batch": 0}, {"concurrency": 0}, {"max_wait_s": -1}])
def test_a_policy_out_of_bounds_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupPolicy(**policy)  # type: ignore[arg-type]
