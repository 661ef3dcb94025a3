"""The sink's web side as `python -m services.sink` starts it: from its settings, on a real socket."""

from __future__ import annotations

import aiohttp
import pytest

from services.sink.live import DEFAULT_WRITE_TIMEOUT_S
from services.sink.serve import serving
from services.sink.settings import SinkSettings
from services.sink.store import Store
from tests.integration.processes import free_port


async def test_live_streams_get_the_write_timeout_and_the_limit_of_the_settings(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("SINK_API_HOST", "127.0.0.1")
    monkeypatch.setenv("SINK_API_PORT", str(port))
    monkeypatch.setenv("SINK_MAX_EVENT_STREAMS", "1")
    monkeypatch.setenv("SINK_EVENT_WRITE_TIMEOUT_S", "0.25")
    async with serving(store, SinkSettings()) as hub, aiohttp.ClientSession() as session:
        assert (hub.max_subscriptions, hub.write_timeout_s) == (1, 0.25)
        async with session.get(f"http://127.0.0.1:{port}/api/events") as first:
            assert first.status == 200
            async with session.get(f"http://127.0.0.1:{port}/api/events") as second:
                assert second.status == 503


def test_the_write_timeout_setting_has_a_default_and_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SinkSettings().event_write_timeout_s == DEFAULT_WRITE_TIMEOUT_S
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("SINK_EVENT_WRITE_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="event_write_timeout_s"):
            SinkSettings()
