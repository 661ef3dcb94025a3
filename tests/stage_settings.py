"""Each stage's settings class, found from the stage graph, so a new stage needs no list here."""

from __future__ import annotations

import importlib

from services.common.settings import ServiceSettings
from services.common.stages import STAGES


def settings_classes() -> dict[str, type[ServiceSettings]]:
    """Stage name → the settings class its `services/<name>/settings.py` defines."""
    found = {}
    for stage in STAGES:
        module = importlib.import_module(f"services.{stage.name}.settings")
        (cls,) = [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, ServiceSettings) and value.__module__ == module.__name__
        ]
        found[stage.name] = cls
    return found
