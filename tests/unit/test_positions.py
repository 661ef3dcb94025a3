import pytest

from services.common.positions import Positions

TP = ("in", 0)


def test_commit_moves_only_past_a_finished_prefix() -> None:
    positions: Positions[None] = Positions()
    tickets = [positions.track(*TP, o) for o in (10, 11, 12, 13)]
    positions.complete(tickets[2])
    assert positions.take() == {}  # 10 and 11 still running
    positions.complete(tickets[0])
    assert positions.take() == {TP: 11}
    positions.complete(tickets[1])
    assert positions.take() == {TP: 13}  # 11 and the earlier 12 both done
    positions.complete(tickets[3])
    assert positions.take() == {TP: 14}


def test_results_come_back_in_offset_order() -> None:
    positions: Positions[str] = Positions()
    a, b, c = (positions.track(*TP, o) for o in (0, 1, 2))
    assert positions.complete(c, "c") == []
    assert positions.complete(b, "b") == []
    assert positions.complete(a, "a") == ["a", "b", "c"]


def test_gaps_in_offsets_are_fine() -> None:
    # compacted topics and transaction markers leave holes
    positions: Positions[None] = Positions()
    five, nine = positions.track(*TP, 5), positions.track(*TP, 9)
    positions.complete(nine)
    assert positions.take() == {}
    positions.complete(five)
    assert positions.take() == {TP: 10}


def test_offsets_must_grow_and_complete_once() -> None:
    positions: Positions[None] = Positions()
    ticket = positions.track(*TP, 3)
    with pytest.raises(ValueError, match="not after"):
        positions.track(*TP, 3)
    positions.complete(ticket)
    with pytest.raises(ValueError, match="not in flight"):
        positions.complete(ticket)


def test_revoke_returns_what_was_not_taken_and_later_completions_count_for_nothing() -> None:
    positions: Positions[str] = Positions()
    first, second = positions.track(*TP, 0), positions.track(*TP, 1)
    other = positions.track("in", 1, 0)
    positions.complete(first, "first")
    positions.complete(other, "other")
    assert positions.revoke([TP]) == {TP: 1}
    assert positions.take() == {("in", 1): 1}
    assert positions.complete(second, "second") is None
    again = positions.track(*TP, 1)  # assigned back, read again
    assert positions.complete(second, "stale") is None
    assert positions.complete(again, "fresh") == ["fresh"]


def test_reset_forgets_everything_in_flight() -> None:
    positions: Positions[None] = Positions()
    ticket = positions.track(*TP, 0)
    positions.complete(positions.track("in", 1, 0))
    positions.reset()
    assert positions.take() == {}
    assert positions.complete(ticket) is None


def test_skip_to_moves_an_idle_partition_past_offsets_that_never_came_as_records() -> None:
    positions: Positions[None] = Positions()
    ticket = positions.track(*TP, 0)
    positions.skip_to(TP, 5)  # offset 0 still in flight: it may not move
    assert positions.take() == {}
    positions.complete(ticket)
    assert positions.take() == {TP: 1}
    positions.skip_to(TP, 3)  # offsets 1 and 2 were a transaction's markers
    assert positions.take() == {TP: 3}
    positions.skip_to(TP, 3)  # no move, nothing to commit again
    positions.skip_to(TP, 2)  # never backwards
    assert positions.take() == {}
    positions.skip_to(("in", 7), 4)  # a partition nothing was read from yet
    assert positions.take() == {("in", 7): 4}
