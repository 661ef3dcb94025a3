from pathlib import Path

import pytest

from services.classifier.hashtags import load_config, parse_config, suggest

CONFIG = parse_config(
    """
top_k = 2
fallback = "others"
default_threshold = 0.5
[[classes]]
label = "cats"
[[classes]]
label = "dogs"
threshold = 0.3
[[classes]]
label = "horse"
hashtag = "horses"
[[classes]]
label = "others"
threshold = 1.01
"""
)


def test_classes_over_their_threshold_best_first() -> None:
    assert suggest([0.6, 0.35, 0.05, 0.0], CONFIG) == [("cats", 0.6), ("dogs", 0.35)]


def test_per_class_thresholds() -> None:
    # 0.35 passes dogs' 0.3 but would not pass the default 0.5
    assert suggest([0.4, 0.35, 0.25, 0.0], CONFIG) == [("dogs", 0.35)]


def test_at_most_top_k() -> None:
    assert [h for h, _ in suggest([0.9, 0.8, 0.7, 0.0], CONFIG)] == ["cats", "dogs"]


def test_hashtag_can_differ_from_the_label() -> None:
    [(hashtag, score)] = suggest([0.0, 0.0, 0.9, 0.1], CONFIG)
    assert hashtag == "horses"
    assert score == pytest.approx(0.9)


def test_fallback_when_nothing_passes_carries_the_models_own_score() -> None:
    [(hashtag, score)] = suggest([0.1, 0.1, 0.1, 0.7], CONFIG)
    assert hashtag == "others"
    assert score == pytest.approx(0.7)


def test_score_count_must_match_the_classes() -> None:
    with pytest.raises(ValueError, match="4 classes"):
        suggest([0.5], CONFIG)


def test_the_shipped_file_lists_the_seed_classes_in_model_order() -> None:
    config = load_config()
    labels = Path("model_repository/resnet50/labels.txt").read_text().split()
    assert [c.label for c in config.classes] == labels
    assert config.fallback == "others"
