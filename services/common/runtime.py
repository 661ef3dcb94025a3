"""Process start-up shared by the services: settings, logs, signals, the health server, the exit code."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from . import logs
from .health import HealthServer
from .settings import ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


@dataclass
class Runtime:
    stage: str
    stop: asyncio.Event
    health: HealthServer
    loop: asyncio.AbstractEventLoop = field(repr=False)
    #: non-zero once something the process cannot recover from happened (`fail`)
    exit_code: int = 0

    def fail(self, reason: str) -> None:
        """End the process with a non-zero code, so its supervisor starts a fresh one.

        Safe to call from any thread (librdkafka's callbacks run on their own)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._fail, reason)

    def _fail(self, reason: str) -> None:
        if not self.exit_code:
            log.critical("stopping: cannot go on", extra={"fields": {"stage": self.stage, "reason": reason}})
        self.exit_code = 1
        self.stop.set()


Body = Callable[[Runtime, S], Awaitable[None]]


def run(stage: str, settings: S, body: Body[S]) -> None:
    """Run `body(runtime, settings)` until it returns or the process gets SIGTERM/SIGINT.

    `settings` is parsed once, by the caller, and handed down."""
    logs.configure(settings.log_level)
    code = asyncio.run(_main(stage, settings, body))
    if code:
        # At once: a process that cannot go on must not be held at exit by a client call stuck
        # on one of its threads (a librdkafka call that never returns, then its handle's
        # destructor). What it had to write is written by now, or never will be.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


async def _main(stage: str, settings: S, body: Body[S]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = HealthServer(settings.metrics_port)
    await health.start()
    rt = Runtime(stage=stage, stop=stop, health=health, loop=loop)
    log.info("started", extra={"fields": {"stage": stage, "metrics_port": settings.metrics_port}})
    try:
        await body(rt, settings)
    except Exception:
        # Through the logs, not the interpreter's own printout: log lines are structured and
        # scrubbed of secrets (an HTTP error's body may echo a token).
        log.exception("stopping: unexpected error", extra={"fields": {"stage": stage}})
        rt.exit_code = 1
    finally:
        await health.stop()
        log.info("stopped", extra={"fields": {"stage": stage, "exit_code": rt.exit_code}})
    return rt.exit_code
