"""`python -m services.sink`: predictions → store; the gallery, API and live updates on SINK_API_PORT."""

from __future__ import annotations

from services.common import runtime
from services.common.avro import PREDICTIONS
from services.common.stream import run_stream

from .backend import open_store
from .handler import StoreWriter
from .serve import serving
from .settings import SinkSettings


async def _service(rt: runtime.Runtime, settings: SinkSettings) -> None:
    store = await open_store(settings)
    try:
        async with serving(store, settings):
            await run_stream(rt, settings, PREDICTIONS, StoreWriter(store).handle)
    finally:
        await store.close()


def main() -> None:
    runtime.run("sink", SinkSettings(), _service)


if __name__ == "__main__":
    main()
