"""The sink's handler: one `predictions` record in, one row upserted, nothing produced.

The store commits before the stream loop lets the offset be committed, so a crash between
the two writes the row again on restart, which the upsert on (tweet id, media key) makes
harmless.
"""

from __future__ import annotations

from typing import Any

from services.common.process import Output

from .store import Store


def flatten(prediction: dict[str, Any]) -> dict[str, Any]:
    """A store row's fields: the record's `origin` and the rest side by side."""
    rest = {key: value for key, value in prediction.items() if key != "origin"}
    return {**prediction["origin"], **rest}


class StoreWriter:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def handle(self, prediction: dict[str, Any]) -> list[Output]:
        await self.store.upsert(flatten(prediction))
        return []
