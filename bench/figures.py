"""One measured figure of a benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    goal: str = ""
    #: what else a reader needs: the absolute figures behind a ratio, the load, the sizes
    context: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "goal": self.goal, "context": self.context}
