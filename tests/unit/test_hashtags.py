from pathlib import Path

import pytest

from services.classifier.hashtags import load_rules, parse_rules, suggest

RULES = parse_rules(
    """
top_k = 2
fallback = "others"
default_threshold = 0.5
[labels.dogs]
threshold = 0.3
[labels.horse]
hashtag = "horses"
[labels.others]
threshold = 1.01
"""
)
CONFIG = RULES.for_labels(["cats", "dogs", "horse", "others"])


def test_classes_over_their_threshold_best_first() -> None:
    assert suggest([0.6, 0.35, 0.05, 0.0], CONFIG) == [("cats", 0.6), ("dogs", 0.35)]


def test_per_label_thresholds() -> None:
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


def test_the_model_decides_the_order() -> None:
    reordered = RULES.for_labels(["others", "horse", "dogs", "cats"])
    assert suggest([0.0, 0.0, 0.35, 0.1], reordered) == [("dogs", 0.35)]


def test_rules_for_labels_the_model_lacks_are_an_error() -> None:
    with pytest.raises(ValueError, match="horse"):
        RULES.for_labels(["cats", "dogs", "others"])


def test_score_count_must_match_the_classes() -> None:
    with pytest.raises(ValueError, match="4 classes"):
        suggest([0.5], CONFIG)


def test_the_shipped_rules_fit_the_shipped_labels() -> None:
    labels = Path("model_repository/gpu/resnet50/labels.txt").read_text().split()
    config = load_rules().for_labels(labels)
    assert config.fallback in labels
    assert [c.label for c in config.classes] == labels


def test_every_model_form_has_the_same_labels() -> None:
    forms = ["gpu/resnet50", "cpu/resnet50", "cpu/noop"]
    texts = {form: Path(f"model_repository/{form}/labels.txt").read_text() for form in forms}
    assert len(set(texts.values())) == 1, texts.keys()
