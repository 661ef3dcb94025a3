"""From a model's class scores to hashtag suggestions: per-class thresholds, top-k, a fallback."""

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
class HashtagConfig:
    classes: tuple[ClassTag, ...]
    top_k: int
    fallback: str

    @property
    def hashtags(self) -> list[str]:
        return [c.hashtag for c in self.classes]


def parse_config(text: str) -> HashtagConfig:
    raw: dict[str, Any] = tomllib.loads(text)
    default = float(raw.get("default_threshold", 0.5))
    classes = tuple(
        ClassTag(str(c["label"]), str(c.get("hashtag", c["label"])), float(c.get("threshold", default)))
        for c in raw["classes"]
    )
    if not classes:
        raise ValueError("the hashtag file lists no classes")
    top_k = int(raw.get("top_k", 3))
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    return HashtagConfig(classes=classes, top_k=top_k, fallback=str(raw.get("fallback", "others")))


def load_config(path: Path | None = None) -> HashtagConfig:
    if path is None:
        return parse_config(resources.files(__package__).joinpath("hashtags.toml").read_text())
    return parse_config(path.read_text())


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
