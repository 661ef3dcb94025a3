"""The store `python -m services.sink` opens, as its settings name it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.sink.backend import open_store
from services.sink.settings import SinkSettings

from .records import prediction
from .test_store_contract import committed


async def test_the_store_groups_commits_as_the_settings_say(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SINK_DATABASE_URL", "")
    monkeypatch.setenv("SINK_DATABASE_PATH", str(tmp_path / "predictions.db"))
    monkeypatch.setenv("SINK_COMMIT_MAX_BATCH", "2")
    monkeypatch.setenv("SINK_COMMIT_MAX_WAIT_MS", "50")
    store = await open_store(SinkSettings())
    try:
        transactions, _ = committed(store.backend)
        await asyncio.gather(*(store.upsert(prediction(str(n))) for n in range(8)))
        assert committed(store.backend)[0] - transactions == 4
    finally:
        await store.close()


@pytest.mark.parametrize(("name", "value"), [("SINK_COMMIT_MAX_BATCH", "0"), ("SINK_COMMIT_MAX_WAIT_MS", "-1")])
def test_commit_settings_out_of_bounds_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("SINK_").lower()):
        SinkSettings()
