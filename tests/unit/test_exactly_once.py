"""The stream loop under exactly-once, on an in-memory broker whose records become visible only
when their transaction commits (tests/fakes/kafka.py), as a read_committed reader sees them."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaError

from services.common import metrics
from services.common.avro import Record
from services.common.errors import RecordError
from services.common.process import Output
from services.common.shedding import ShedLevel
from tests.fakes.kafka import FakeTransactionalProducer
from tests.unit.test_stream_loop import IN, OUT, P0, P1, Gates, Harness, eventually, lettered, numbered, running


def transactions(h: Harness) -> FakeTransactionalProducer:
    assert isinstance(h.producer, FakeTransactionalProducer)
    return h.producer


def sources_of(h: Harness) -> dict[str, tuple[tuple[str, int], int]]:
    """Input partition and offset of each tweet id."""
    return {str(m.key()): ((m.topic(), m.partition()), m.offset()) for m in h.broker.records(IN)}


def assert_each_transaction_holds_the_outputs_of_its_offsets(h: Harness) -> None:
    """Committed transactions: their outputs come from exactly the offsets they move past."""
    sources = sources_of(h)
    position: dict[tuple[str, int], int] = {}
    for transaction in transactions(h).transactions:
        if transaction.outcome != "committed":
            continue
        held = sorted(sources[str(r.key)] for r in transaction.records)
        expected = sorted((tp, o) for tp, end in transaction.offsets.items() for o in range(position.get(tp, 0), end))
        assert held == expected, (held, transaction.offsets)
        position.update(transaction.offsets)


async def test_outputs_of_records_finished_out_of_order_commit_with_their_offsets_in_order() -> None:
    gates = Gates()
    async with running(gates.handle, setup=numbered(6), exactly_once=True) as h:
        await eventually("all in flight", lambda: len(gates.calls) == 6)
        for tweet_id in ("5", "3", "4"):
            gates.open(tweet_id)
        await asyncio.sleep(0.05)
        assert h.written(OUT) == [], "nothing is visible before the records before it are done"
        gates.open("0")
        await eventually("0 committed", lambda: h.written(OUT) == ["0"])
        assert h.consumer.committed_offsets[P0] == 1
        gates.open("2")
        gates.open("1")
        await eventually("all committed", lambda: h.consumer.committed_offsets.get(P0) == 6)
    assert h.written(OUT) == ["0", "1", "2", "3", "4", "5"]
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)
    assert h.consumer.stored == {}, "no offset is stored outside a transaction"


async def test_a_failed_commit_is_aborted_and_its_records_processed_again_once() -> None:
    async def handle(record: Record) -> list[Output]:
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    abortable = KafkaError(KafkaError._STATE, "the coordinator moved", txn_requires_abort=True)
    retriable = KafkaError(KafkaError._TIMED_OUT, "slow coordinator", retriable=True)
    async with running(
        handle, setup=numbered(20), exactly_once=True, commit_errors=[retriable, abortable, abortable]
    ) as h:
        await eventually("all committed", lambda: h.consumer.committed_offsets.get(P0) == 20)
        outcomes = Counter(t.outcome for t in transactions(h).transactions)
        assert outcomes["aborted"] == 2
        assert h.consumer.seeks, "the input was rewound"
    assert sorted(h.written(OUT), key=int) == [str(i) for i in range(20)], "each output exactly once"
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)
    assert metrics.TRANSACTIONS.labels(h.stage, "aborted")._value.get() == 2


async def test_dead_letters_and_shed_copies_commit_in_the_same_transactions() -> None:
    async def handle(record: Record) -> list[Output]:
        if record["tweet_id"].startswith("bad"):
            raise RecordError("broken")
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    def setup(h: Harness) -> None:
        for i in range(12):
            h.put(f"bad{i}" if i % 3 == 0 else f"low{i}", priority=0 if i % 2 else 1)

    levels = [ShedLevel(min_priority=1, lag_records=4, lag_seconds=3600)]
    async with running(handle, setup=setup, exactly_once=True, consume_batch_size=1, shed_levels=levels) as h:
        await eventually("all committed", lambda: h.consumer.committed_offsets.get(P0) == 12)
    copies = h.written(IN + ".dlq") + h.written(IN + ".shed") + h.written(OUT)
    assert sorted(copies) == sorted(sources_of(h)), "each input once, in exactly one place"
    assert h.written(IN + ".shed"), "some were shed"
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)


async def test_a_revoked_partition_commits_its_finished_prefix_and_nothing_of_what_finishes_later() -> None:
    gates = Gates()

    async with running(gates.handle, partitions=(P0, P1), setup=lettered(3), exactly_once=True) as h:
        await eventually("all in flight", lambda: len(gates.calls) == 6)
        gates.open("a0")
        gates.open("b0")
        await eventually("a0, b0 committed", lambda: sorted(h.written(OUT)) == ["a0", "b0"])
        h.consumer.revoke([P0])  # at the next consume
        gates.open("b1")
        await eventually("b1 committed", lambda: "b1" in h.written(OUT))
        gates.open("a1")
        gates.open("a2")
        gates.open("b2")
        await eventually("partition 1 committed", lambda: h.consumer.committed_offsets.get(P1) == 3)
        await asyncio.sleep(0.05)
        assert h.consumer.committed_offsets[P0] == 1
        assert not {"a1", "a2"} & set(h.written(OUT)), "outputs of a revoked partition's unfinished records"
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)


async def test_lost_partitions_abort_the_open_transaction() -> None:
    gates = Gates()

    def setup(h: Harness) -> None:
        h.put("a0", partition=0)
        h.put("b0", partition=1)

    async with running(gates.handle, partitions=(P0, P1), setup=setup, exactly_once=True) as h:
        await eventually("both in flight", lambda: len(gates.calls) == 2)
        h.consumer.lose([P1])
        await eventually("the loss seen", lambda: P1 not in h.consumer.positions)
        gates.open("b0")  # b0's completion, after the loss, releases nothing
        # a0 was in flight in the aborted transaction: it is read again from the committed position
        await eventually("a0 read again", lambda: gates.calls.get("a0") == 2)
        gates.open("a0", call=1)
        gates.open("a0", call=2)
        await eventually("a0 committed after the loss", lambda: h.written(OUT) == ["a0"])
        assert P1 not in h.consumer.committed_offsets
        assert "aborted" in {t.outcome for t in transactions(h).transactions}
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)


async def test_a_loss_while_the_coordinator_moves_rewinds_once_it_answers() -> None:
    gates = Gates()

    def setup(h: Harness) -> None:
        h.put("a0", partition=0)
        h.put("b0", partition=1)
        not_coordinator = KafkaError(KafkaError.NOT_COORDINATOR, "Not coordinator")
        h.consumer.committed_errors = [not_coordinator, not_coordinator]

    async with running(gates.handle, partitions=(P0, P1), setup=setup, exactly_once=True) as h:
        await eventually("both in flight", lambda: len(gates.calls) == 2)
        h.consumer.lose([P1])
        await eventually("rewound after the coordinator answered", lambda: bool(h.consumer.seeks))
        assert h.consumer.committed_errors == []
        assert [tp for tp, _ in h.consumer.seeks] == [P0], "only the partition still assigned is rewound"
        gates.open("b0")
        await eventually("a0 read again", lambda: gates.calls.get("a0") == 2)
        gates.open("a0", call=1)
        gates.open("a0", call=2)
        await eventually("a0 committed", lambda: h.written(OUT) == ["a0"])
    assert not h.fatal


async def test_a_fatal_error_ends_the_loop_at_once() -> None:
    gates = Gates()
    fenced = KafkaError(KafkaError._FENCED, "a newer instance took over", fatal=True)
    async with running(
        gates.handle, setup=numbered(3), exactly_once=True, commit_errors=[fenced], expect_fatal=True
    ) as h:
        gates.open("0")  # its commit is the one refused; 1 and 2 are still in flight
        await eventually("told to stop", lambda: bool(h.fatal))
        assert h.task is not None
        await asyncio.wait_for(h.task, 5)  # no 20 s drain: the successor is already at work
        assert {("1", 1), ("2", 1)} <= gates.cancelled
    assert h.fatal[0].startswith("transactional producer:")
    assert h.written(OUT) == [], "nothing of the fenced transaction is visible"
    assert P0 not in h.consumer.committed_offsets


async def test_records_finished_while_a_commit_runs_go_into_the_next_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gates = Gates()
    hold, committing = asyncio.Event(), []
    commit = FakeTransactionalProducer.commit_transaction

    async def slow_commit(self: FakeTransactionalProducer) -> None:
        committing.append(1)
        if len(committing) == 1:
            await hold.wait()
        await commit(self)

    monkeypatch.setattr(FakeTransactionalProducer, "commit_transaction", slow_commit)
    async with running(gates.handle, setup=numbered(2), exactly_once=True) as h:
        await eventually("both in flight", lambda: len(gates.calls) == 2)
        gates.open("0")
        await eventually("the first commit under way", lambda: bool(committing))
        gates.open("1")  # released while the commit runs
        await asyncio.sleep(0.02)
        hold.set()
        await eventually("both committed", lambda: h.consumer.committed_offsets.get(P0) == 2)
    assert h.written(OUT) == ["0", "1"]
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)


async def test_a_write_that_fails_at_once_aborts_its_transaction_instead_of_committing_past_it() -> None:
    async def handle(record: Record) -> list[Output]:
        raise RecordError("broken")

    missing = [KafkaError._UNKNOWN_TOPIC] * 3  # the dead-letter topic missing, then created
    async with running(handle, setup=numbered(2), exactly_once=True, failures={IN + ".dlq": missing}) as h:
        await eventually("both committed", lambda: h.consumer.committed_offsets.get(P0) == 2)
        assert Counter(t.outcome for t in transactions(h).transactions)["aborted"] >= 1
    assert sorted(h.written(IN + ".dlq")) == ["0", "1"], "each dead letter once, none lost"
    assert_each_transaction_holds_the_outputs_of_its_offsets(h)


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly_once", "at_least_once"])
async def test_a_refused_output_and_its_refused_dead_letter_end_as_a_dead_letter_cut_to_fit(
    exactly_once: bool,
) -> None:
    async def handle(record: Record) -> list[Output]:
        return [Output(OUT, b"x", key=record["tweet_id"])]

    failures = {OUT: [KafkaError.MSG_SIZE_TOO_LARGE], IN + ".dlq": [KafkaError.MSG_SIZE_TOO_LARGE]}
    async with running(handle, setup=numbered(2), exactly_once=exactly_once, failures=failures) as h:
        await eventually("both done", lambda: h.written(OUT) == ["1"] and len(h.written(IN + ".dlq")) == 1)
    (letter,) = h.broker.records(IN + ".dlq")
    headers = dict(letter.headers() or [])
    assert headers["error"] == b"output_refused"
    assert b"bytes" in headers["value_truncated"]


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly_once", "at_least_once"])
async def test_a_handler_returning_nonsense_is_a_dead_letter_not_a_frozen_partition(exactly_once: bool) -> None:
    async def handle(record: Record) -> list[Any]:
        return [None] if record["tweet_id"] == "1" else [Output(OUT, b"ok", key=record["tweet_id"])]

    async with running(handle, setup=numbered(4), exactly_once=exactly_once) as h:
        done = h.consumer.committed_offsets if exactly_once else h.consumer.stored
        await eventually("every record done", lambda: done.get(P0) == 4)
    assert h.written(OUT) == ["0", "2", "3"]
    (letter,) = h.broker.records(IN + ".dlq")
    assert dict(letter.headers() or [])["error"] == b"internal_error"


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly_once", "at_least_once"])
async def test_a_reader_of_a_transactional_writer_commits_past_its_markers(exactly_once: bool) -> None:
    """The writer's last transaction ended with a marker after its records: the reader must not
    stay committed one short of the end for as long as nothing new is written (that looked, to
    the stage watching it, like a record growing older by the second)."""

    async def handle(record: Record) -> list[Output]:
        return [Output(OUT, b"ok", key=record["tweet_id"])]

    def setup(h: Harness) -> None:
        for i in range(3):
            h.put(str(i))
        h.broker.mark(IN)

    async with running(handle, setup=setup, exactly_once=exactly_once) as h:
        done = h.consumer.committed_offsets if exactly_once else h.consumer.stored
        await eventually("committed past the marker", lambda: done.get(P0) == 4)
    assert h.written(OUT) == ["0", "1", "2"]
