"""`python -m services.sink`: predictions → store, and the API on SINK_API_PORT."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.common import runtime
from services.common.avro import PREDICTIONS
from services.common.stream import Output, run_stream

from .api import make_app
from .settings import SinkSettings
from .store import Store


async def _service(rt: runtime.Runtime) -> None:
    settings = SinkSettings()
    store = Store(settings.database_path)

    async def handle(prediction: dict[str, Any]) -> list[Output]:
        store.upsert(prediction)
        return []

    runner = web.AppRunner(make_app(store), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.api_host, settings.api_port).start()
    try:
        await run_stream(rt, settings, PREDICTIONS, handle)
    finally:
        await runner.cleanup()
        store.close()


def main() -> None:
    runtime.run("sink", SinkSettings(), _service)


if __name__ == "__main__":
    main()
