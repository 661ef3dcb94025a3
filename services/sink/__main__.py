"""`python -m services.sink`: predictions → store; the gallery, API and live updates on SINK_API_PORT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from services.common import runtime
from services.common.avro import PREDICTIONS
from services.common.stream import Output, run_stream

from .api import make_app
from .backend import open_store
from .live import LiveHub
from .settings import SinkSettings

log = logging.getLogger(__name__)


async def _service(rt: runtime.Runtime) -> None:
    settings = SinkSettings()
    store = await open_store(settings)
    hub = LiveHub(settings.max_event_streams)
    watcher = asyncio.create_task(store.watch(hub.publish), name="sink-live-feed")
    watcher.add_done_callback(_report_end)

    async def handle(prediction: dict[str, Any]) -> list[Output]:
        await store.upsert(prediction)
        return []

    runner = web.AppRunner(make_app(store, hub, settings.gallery_image_sources), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.api_host, settings.api_port).start()
    log.info("serving", extra={"fields": {"port": settings.api_port, "store": store.backend}})
    try:
        await run_stream(rt, settings, PREDICTIONS, handle)
    finally:
        hub.close()
        await runner.cleanup()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await store.close()


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the live feed stopped; the gallery gets no live updates", exc_info=task.exception())


def main() -> None:
    runtime.run("sink", SinkSettings(), _service)


if __name__ == "__main__":
    main()
