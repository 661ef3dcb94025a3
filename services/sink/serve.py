"""The sink's web side: the gallery, the JSON API and the live feed, for as long as the stage runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .api import make_app
from .live import LiveHub
from .settings import SinkSettings
from .store import Store

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def serving(store: Store, settings: SinkSettings) -> AsyncIterator[LiveHub]:
    """Serve until the block ends; the block gets the hub of the live streams."""
    hub = LiveHub(settings.max_event_streams, write_timeout_s=settings.event_write_timeout_s)
    watcher = asyncio.create_task(store.watch(hub.publish), name="sink-live-feed")
    watcher.add_done_callback(_report_end)
    runner = web.AppRunner(make_app(store, hub, settings.gallery_image_sources), access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.api_host, settings.api_port).start()
        log.info("serving", extra={"fields": {"port": settings.api_port, "store": store.backend}})
        yield hub
    finally:
        hub.close()
        await runner.cleanup()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the live feed stopped; the gallery gets no live updates", exc_info=task.exception())
