import pytest

from services.ingest.dedup import RecentIds


def test_an_id_seen_in_the_window_is_a_duplicate() -> None:
    recent = RecentIds(3)
    assert recent.add("1")
    assert not recent.add("1")


def test_the_window_is_bounded_and_forgets_the_oldest_first() -> None:
    recent = RecentIds(3)
    for tweet_id in ("1", "2", "3", "4"):
        assert recent.add(tweet_id)
    assert len(recent) == 3
    assert "1" not in recent
    assert recent.add("1")  # forgotten, so new again


def test_a_repeat_keeps_an_id_fresh() -> None:
    recent = RecentIds(2)
    recent.add("1")
    recent.add("2")
    assert not recent.add("1")  # "1" becomes the newest
    recent.add("3")  # evicts "2", the oldest
    assert "1" in recent
    assert "2" not in recent


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentIds(0)
