"""From a model's label scores to hashtag suggestions: per-label thresholds, top-k, a fallback."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ClassTag:
    label: str
    hashtag: str
    threshold: float


@dataclass(frozen=True)
class HashtagRules:
    """The checked-in rules, before they meet a model's labels."""

    top_k: int
    fallback: str
    default_threshold: float
    overrides: dict[str, dict[str, Any]]

    def for_labels(self, labels: Sequence[str]) -> HashtagConfig:
        """The rules applied to a model's labels, in the model's output order."""
        unknown = set(self.overrides) - set(labels)
        if unknown:
            raise ValueError(f"the hashtag rules name labels the model does not have: {sorted(unknown)}")
        classes = tuple(
            ClassTag(
                label,
                str(self.overrides.get(label, {}).get("hashtag", label)),
                float(self.overrides.get(label, {}).get("threshold", self.default_threshold)),
            )
            for label in labels
        )
        return HashtagConfig(classes=classes, top_k=self.top_k, fallback=self.fallback)


@dataclass(frozen=True)
class HashtagConfig:
    classes: tuple[ClassTag, ...]
    top_k: int
    fallback: str


def parse_rules(text: str) -> HashtagRules:
    raw: dict[str, Any] = tomllib.loads(text)
    top_k = int(raw.get("top_k", 3))
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    return HashtagRules(
        top_k=top_k,
        fallback=str(raw.get("fallback", "others")),
        default_threshold=float(raw.get("default_threshold", 0.5)),
        overrides=dict(raw.get("labels", {})),
    )


def load_rules(path: Path | None = None) -> HashtagRules:
    if path is None:
        return parse_rules(resources.files(__package__).joinpath("hashtags.toml").read_text())
    return parse_rules(path.read_text())


def suggest(scores: Sequence[float], config: HashtagConfig) -> list[tuple[str, float]]:
    """Hashtags whose score reaches their threshold, best first, at most top_k; else the fallback."""
    if len(scores) != len(config.classes):
        raise ValueError(f"{len(scores)} scores for {len(config.classes)} classes")
    passed = [(c.hashtag, float(s)) for c, s in zip(config.classes, scores, strict=True) if s >= c.threshold]
    passed.sort(key=lambda pair: pair[1], reverse=True)
    if passed:
        return passed[: config.top_k]
    # The fallback's score is the model's own score for it when the model has such a class.
    fallback_score = next(
        (float(s) for c, s in zip(config.classes, scores, strict=True) if c.hashtag == config.fallback), 0.0
    )
    return [(config.fallback, fallback_score)]
