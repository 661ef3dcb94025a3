import pytest

from services.ingest.loadshape import HIGH_RULE, LOW_RULE, LoadShape, Throttle, shaped_payloads


def test_steady_rate_then_burst_then_steady() -> None:
    shape = LoadShape(rate=10, duration_s=30, burst_factor=3, burst_start_s=10, burst_seconds=10)
    times = list(shape.send_times())
    before = [t for t in times if t < 10]
    during = [t for t in times if 10 <= t < 20]
    after = [t for t in times if t >= 20]
    assert len(before) == pytest.approx(100, abs=1)
    assert len(during) == pytest.approx(300, abs=1)
    assert len(after) == pytest.approx(100, abs=1)
    assert times == sorted(times)


def test_no_burst_is_a_steady_rate() -> None:
    assert len(list(LoadShape(rate=4, duration_s=5).send_times())) == 20


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoadShape(rate=0, duration_s=5)


def post(n: int) -> dict[str, object]:
    return {
        "data": {"id": str(n), "text": "t", "attachments": {"media_keys": ["3_a"]}},
        "includes": {"media": [{"media_key": "3_a", "type": "photo", "url": "http://x/a.jpg"}]},
        "matching_rules": [{"id": "9", "tag": "whatever"}],
    }


def test_posts_are_cycled_with_fresh_ids_and_media_keys() -> None:
    out = list(shaped_payloads([post(1), post(2)], 5, high_share=0.5, id_base=100))
    ids = [p["data"]["id"] for p, _ in out]
    assert ids == ["100", "101", "102", "103", "104"]
    keys = [p["includes"]["media"][0]["media_key"] for p, _ in out]
    assert len(set(keys)) == 5
    assert all(p["data"]["attachments"]["media_keys"] == [p["includes"]["media"][0]["media_key"]] for p, _ in out)
    urls = [p["includes"]["media"][0]["url"] for p, _ in out]
    assert urls[0] == "http://x/a.jpg?copy=100"
    assert len(set(urls)) == 5


def test_the_priority_mix_follows_the_share() -> None:
    out = list(shaped_payloads([post(1)], 2000, high_share=0.2, id_base=0, seed=7))
    high = [p for p, is_high in out if is_high]
    assert 0.17 < len(high) / len(out) < 0.23
    assert all(p["matching_rules"] == [HIGH_RULE] for p in high)
    assert all(p["matching_rules"] == [LOW_RULE] for p, is_high in out if not is_high)


def test_the_seed_throttle_sends_at_most_its_budget_per_window() -> None:
    throttle = Throttle.parse("128/8")
    sent = [t for t in (i / 50 for i in range(50 * 24)) if throttle.admit(t)]  # 50 posts/s for 24 s
    assert len(sent) == 3 * 128
    assert all(sum(1 for t in sent if w * 8 <= t < (w + 1) * 8) == 128 for w in range(3))
