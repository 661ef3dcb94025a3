"""The next stage's lag from its committed offsets and the output topic's high watermarks."""

import pytest

from services.common.downstream import WriteClock, group_lag
from services.common.shedding import Lag


def clock(*samples: tuple[int, float]) -> WriteClock:
    c = WriteClock()
    for high, at in samples:
        c.observe(high, at)
    return c


def test_an_offset_is_placed_between_the_samples_that_bracket_it() -> None:
    c = clock((0, 100.0), (10, 110.0))  # offsets 0..9 written between t=100 and t=110
    assert c.written_at(0) == pytest.approx(101.0)
    assert c.written_at(4) == pytest.approx(105.0)
    assert c.written_at(9) == pytest.approx(110.0)


def test_an_offset_older_than_every_sample_gets_the_oldest_time() -> None:
    c = clock((50, 100.0), (60, 110.0))
    assert c.written_at(3) == 100.0


def test_an_offset_not_written_yet_has_no_time() -> None:
    c = clock((10, 100.0))
    assert c.written_at(10) is None
    assert WriteClock().written_at(0) is None


def test_a_watermark_that_stands_still_adds_no_sample() -> None:
    c = clock((0, 100.0), (10, 110.0), (10, 200.0), (20, 210.0))
    # offset 12 was written between 200 and 210, not between 110 and 210
    assert c.written_at(12) == pytest.approx(203.0)


def test_a_watermark_that_goes_back_starts_the_clock_again() -> None:
    c = clock((0, 100.0), (1000, 110.0), (5, 300.0))  # the topic was recreated
    assert c.written_at(2) == 300.0


def test_samples_are_bounded() -> None:
    c = WriteClock(max_samples=3)
    for i in range(10):
        c.observe(10 * i, float(i))
    assert c.written_at(0) == 7.0  # older samples are gone: the oldest kept is (70, 7.0)


def test_the_watermark_at_a_time_is_interpolated_between_samples() -> None:
    c = clock((0, 100.0), (10, 110.0), (10, 200.0), (20, 210.0))
    assert c.high_at(99.0) is None
    assert c.high_at(105.0) == 5
    assert c.high_at(150.0) == 10  # it stood still from 110 to 200
    assert c.high_at(205.0) == 15
    assert c.high_at(999.0) == 20


def test_group_lag_sums_records_and_takes_the_oldest_unread_record() -> None:
    clocks = {0: clock((0, 100.0), (10, 110.0)), 1: clock((0, 100.0), (10, 110.0))}
    lag = group_lag(committed={0: 4, 1: 10}, clocks=clocks, now=120.0)
    assert lag.records == 6
    assert lag.seconds == pytest.approx(15.0)


def test_what_was_written_within_the_grace_is_not_counted_behind() -> None:
    # 100 records a second; the group committed offset 950 a moment ago, as a group that
    # keeps up and commits every second does: 50 records written in the last half second.
    clocks = {0: clock((0, 100.0), (1000, 110.0))}
    assert group_lag(committed={0: 950}, clocks=clocks, now=110.0, grace_s=1.0) == Lag(0, 0.0)
    assert group_lag(committed={0: 950}, clocks=clocks, now=110.0).records == 50
    behind = group_lag(committed={0: 500}, clocks=clocks, now=110.0, grace_s=1.0)
    assert behind.records == 400  # written before 109 s and not committed
    assert behind.seconds == pytest.approx(110.0 - 105.01 - 1.0)


def test_a_partition_the_group_never_committed_is_left_out() -> None:
    clocks = {0: clock((0, 100.0), (10, 110.0))}
    assert group_lag(committed={}, clocks=clocks, now=120.0) == Lag(0, 0.0)


def test_a_group_that_is_caught_up_has_no_lag() -> None:
    clocks = {0: clock((0, 100.0), (10, 110.0))}
    assert group_lag(committed={0: 10}, clocks=clocks, now=500.0) == Lag(0, 0.0)


def test_a_group_one_short_of_a_transactional_writers_watermark_is_caught_up() -> None:
    # The writer's last transaction ended with a marker at offset 10: the group read every
    # record and committed 10; the marker never comes to it as a record. An hour on it is
    # still not behind (it read as one record growing older by the second).
    clocks = {0: clock((0, 100.0), (11, 110.0)), 1: clock((0, 100.0), (11, 110.0))}
    assert group_lag(committed={0: 10, 1: 10}, clocks=clocks, now=3_700.0) == Lag(0, 0.0)
    # Two short is a record not read.
    assert group_lag(committed={0: 9, 1: 10}, clocks=clocks, now=3_700.0).records == 2
