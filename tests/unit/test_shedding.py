import pytest

from services.common.shedding import Lag, ShedLevel, ShedPolicy

LEVELS = [
    ShedLevel(min_priority=1, lag_records=100, lag_seconds=10),
    ShedLevel(min_priority=2, lag_records=1000, lag_seconds=60),
]


def policy() -> ShedPolicy:
    return ShedPolicy(LEVELS, exit_ratio=0.5, min_dwell_s=5)


def test_no_overload_keeps_everything() -> None:
    p = policy()
    assert p.update(Lag(records=99, seconds=9.9), now=0) is None
    assert all(p.keep(priority) for priority in (-5, 0, 1, 2))


@pytest.mark.parametrize("lag", [Lag(100, 0), Lag(0, 10)])
def test_either_lag_enters_a_level(lag: Lag) -> None:
    p = policy()
    assert p.update(lag, now=0) == 1
    assert not p.keep(0)
    assert p.keep(1)
    assert p.keep(2)


def test_a_large_lag_jumps_straight_to_the_highest_level_it_reaches() -> None:
    p = policy()
    assert p.update(Lag(5000, 0), now=0) == 2
    assert not p.keep(1)
    assert p.keep(2)


def test_hysteresis_holds_the_level_between_the_exit_and_enter_thresholds() -> None:
    p = policy()
    p.update(Lag(150, 0), now=0)
    for t in range(1, 100):
        assert p.update(Lag(60, 6), now=t) == 1  # under 100/10, over 50/5: stays


def test_leaves_only_after_staying_calm_for_the_dwell_time() -> None:
    p = policy()
    p.update(Lag(150, 0), now=0)
    assert p.update(Lag(10, 1), now=1) == 1
    assert p.update(Lag(10, 1), now=5.9) == 1
    assert p.update(Lag(10, 1), now=6) is None


def test_a_spike_during_the_dwell_restarts_it() -> None:
    p = policy()
    p.update(Lag(150, 0), now=0)
    p.update(Lag(10, 1), now=1)
    p.update(Lag(70, 1), now=3)  # back over the exit threshold
    assert p.update(Lag(10, 1), now=7) == 1
    assert p.update(Lag(10, 1), now=12) is None


def test_steps_down_one_level_at_a_time() -> None:
    p = policy()
    p.update(Lag(5000, 0), now=0)
    assert p.update(Lag(0, 0), now=1) == 2
    assert p.update(Lag(0, 0), now=6) == 1
    assert p.update(Lag(0, 0), now=10) == 1
    assert p.update(Lag(0, 0), now=11) is None


def test_levels_must_grow_together() -> None:
    with pytest.raises(ValueError, match="smaller lag"):
        ShedPolicy([ShedLevel(min_priority=1, lag_records=100, lag_seconds=10),
                    ShedLevel(min_priority=2, lag_records=50, lag_seconds=60)])  # fmt: skip


def test_no_levels_never_sheds() -> None:
    p = ShedPolicy([])
    assert p.update(Lag(10**9, 10**6), now=0) is None
