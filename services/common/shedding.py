"""Lag-driven priority shedding: which priorities a falling-behind consumer still processes.

The consumer's lag (records behind the high watermark, seconds behind the newest record in
hand) picks a level; each level keeps only records at or above its minimum priority, so
the lowest priorities go first and go before any expensive work (Tatbul et al., "Load
Shedding in a Data Stream Manager", VLDB 2003: drop early, drop what is worth least).
Levels are entered as soon as either lag reaches their threshold and left, one at a time,
only once both lags have stayed under `exit_ratio` of it for `min_dwell_s`: hysteresis,
so the decision does not flap at a threshold. Pure logic; the stream loop feeds it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field


class ShedLevel(BaseModel):
    """At or above this lag, keep only records with `priority >= min_priority`."""

    min_priority: int
    lag_records: int = Field(gt=0)
    lag_seconds: float = Field(gt=0)


DEFAULT_LEVELS = (
    ShedLevel(min_priority=1, lag_records=2_000, lag_seconds=10.0),
    ShedLevel(min_priority=2, lag_records=10_000, lag_seconds=30.0),
)


@dataclass(frozen=True)
class Lag:
    records: int
    seconds: float


class ShedPolicy:
    def __init__(self, levels: Sequence[ShedLevel], exit_ratio: float = 0.5, min_dwell_s: float = 5.0) -> None:
        ordered = sorted(levels, key=lambda level: level.min_priority)
        for lower, higher in itertools.pairwise(ordered):
            if higher.lag_records < lower.lag_records or higher.lag_seconds < lower.lag_seconds:
                raise ValueError("a level that keeps less must not start at a smaller lag")
        if not 0 < exit_ratio < 1:
            raise ValueError("exit_ratio must be between 0 and 1")
        self.levels = tuple(ordered)
        self.exit_ratio = exit_ratio
        self.min_dwell_s = min_dwell_s
        self.level = 0  # how many levels are active; 0 keeps everything
        self._calm_since: float | None = None

    @property
    def min_priority(self) -> int | None:
        """The lowest priority still processed, or None when everything is."""
        return self.levels[self.level - 1].min_priority if self.level else None

    def keep(self, priority: int) -> bool:
        floor = self.min_priority
        return floor is None or priority >= floor

    def update(self, lag: Lag, now: float) -> int | None:
        """Move to the level this lag calls for; return the minimum priority kept."""
        wanted = sum(1 for level in self.levels if _reached(lag, level, 1.0))
        if wanted > self.level:
            self.level = wanted
            self._calm_since = None
        elif self.level and not _reached(lag, self.levels[self.level - 1], self.exit_ratio):
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.min_dwell_s:
                self.level -= 1
                self._calm_since = now if self.level else None
        else:
            self._calm_since = None
        return self.min_priority


def _reached(lag: Lag, level: ShedLevel, ratio: float) -> bool:
    return lag.records >= level.lag_records * ratio or lag.seconds >= level.lag_seconds * ratio
