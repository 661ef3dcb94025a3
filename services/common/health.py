"""The `/metrics`, `/healthz` and `/livez` endpoints every service serves on its own port.

`/healthz` says whether the service is ready to do its work (503 with the reasons when a
dependency is missing: no partitions yet, the model not ready); `/livez` only that the
process and its event loop answer, so a liveness probe does not restart a service that is
rightly waiting for Kafka or Triton to come back.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], str | None]
"""Returns None when ready, else why not."""


class HealthServer:
    def __init__(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - pods listen on all interfaces
        self.port = port
        self.host = host
        self._checks: list[ReadinessCheck] = []
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/livez", self._livez)
        self._runner: web.AppRunner | None = None

    def add_check(self, check: ReadinessCheck) -> None:
        self._checks.append(check)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _livez(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _healthz(self, _: web.Request) -> web.Response:
        problems = [p for p in (check() for check in self._checks) if p]
        if problems:
            return web.json_response({"status": "unavailable", "problems": problems}, status=503)
        return web.json_response({"status": "ok"})
