"""`python -m services.fetcher`: tweets → images."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from services.common import runtime
from services.common.avro import TWEETS
from services.common.stream import run_stream

from .fetch import Fetcher
from .pipeline import ImagePipeline
from .settings import FetcherSettings


async def _service(rt: runtime.Runtime, settings: FetcherSettings) -> None:
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
        async with Fetcher(settings) as fetcher:
            pipeline = ImagePipeline(settings, fetcher, pool)
            await run_stream(rt, settings, TWEETS, pipeline.handle)


def main() -> None:
    runtime.run("fetcher", FetcherSettings(), _service)


if __name__ == "__main__":
    main()
