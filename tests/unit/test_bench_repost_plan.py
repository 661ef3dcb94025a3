"""The replay `make bench ONLY=classifier_cache` measures: its share of reposts, of earlier media."""

from bench.bench_classifier_cache import repost_plan


def test_the_plan_has_the_share_of_reposts_each_of_an_earlier_post_s_image() -> None:
    plan = repost_plan(1000, 0.3, seed=7)
    originals = max(plan) + 1
    assert len(plan) - originals == 300
    seen: set[int] = set()
    for image in plan:
        assert image in seen or image == len(seen)  # a repost's image, or the next new one
        seen.add(image)
    assert repost_plan(1000, 0.3, seed=7) == plan


def test_no_reposts_is_every_image_new() -> None:
    assert repost_plan(50, 0.0, seed=1) == list(range(50))
