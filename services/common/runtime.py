"""Process start-up shared by the services: logs, signals, the health server."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import logs
from .health import HealthServer
from .settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    stage: str
    stop: asyncio.Event
    health: HealthServer


Body = Callable[[Runtime], Awaitable[None]]


def run(stage: str, settings: ServiceSettings, body: Body) -> None:
    """Run `body` until it returns or the process gets SIGTERM/SIGINT."""
    logs.configure(settings.log_level)
    asyncio.run(_main(stage, settings, body))


async def _main(stage: str, settings: ServiceSettings, body: Body) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = HealthServer(settings.metrics_port)
    await health.start()
    log.info("started", extra={"fields": {"stage": stage, "metrics_port": settings.metrics_port}})
    try:
        await body(Runtime(stage=stage, stop=stop, health=health))
    finally:
        await health.stop()
        log.info("stopped", extra={"fields": {"stage": stage}})
