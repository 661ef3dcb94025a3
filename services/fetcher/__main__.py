"""`python -m services.fetcher`: tweets → images."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.common import runtime
from services.common.avro import IMAGES, TWEETS
from services.common.stream import DeadLetter, Output, run_stream
from services.common.timeutil import now_ms

from . import metrics
from .fetch import Fetcher, FetchError
from .imaging import PIXEL_FORMAT, ImageError, to_model_input
from .settings import FetcherSettings


class ImagePipeline:
    """Fetch and decode every image of a post; one `images` record or one dead letter per image."""

    def __init__(self, settings: FetcherSettings, fetcher: Fetcher, decode_pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.decode_pool = decode_pool

    async def handle(self, tweet: dict[str, Any]) -> list[Output | DeadLetter]:
        return list(await asyncio.gather(*(self._one(tweet, media) for media in tweet["media"])))

    async def _one(self, tweet: dict[str, Any], media: dict[str, Any]) -> Output | DeadLetter:
        url = media["url"]
        try:
            started = time.monotonic()
            data = await self.fetcher.fetch(url)
            metrics.FETCH_SECONDS.observe(time.monotonic() - started)
            metrics.FETCH_BYTES.inc(len(data))
            started = time.monotonic()
            image = await asyncio.get_running_loop().run_in_executor(
                self.decode_pool, to_model_input, data, self.settings.image_size, self.settings.max_pixels
            )
            metrics.DECODE_SECONDS.observe(time.monotonic() - started)
        except (FetchError, ImageError) as exc:
            metrics.FETCHES.labels("refused", exc.reason).inc()
            return DeadLetter(exc.reason, exc.detail, (("media_key", media["media_key"]), ("url", url)))
        metrics.FETCHES.labels("ok", "").inc()
        record = {
            "tweet_id": tweet["tweet_id"],
            "media_key": media["media_key"],
            "image_url": url,
            "post_url": tweet["post_url"],
            "text": tweet["text"],
            "author_username": tweet["author_username"],
            "priority": tweet["priority"],
            "ingest_ts_ms": tweet["ingest_ts_ms"],
            "fetch_ts_ms": now_ms(),
            "source_width": image.source_width,
            "source_height": image.source_height,
            "source_format": image.source_format,
            "pixel_format": PIXEL_FORMAT,
            "height": image.size,
            "width": image.size,
            "pixels": image.pixels,
        }
        return Output(self.settings.output_topic, IMAGES.encode(record), key=tweet["tweet_id"])


async def _service(rt: runtime.Runtime) -> None:
    settings = FetcherSettings()
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
        async with Fetcher(settings) as fetcher:
            pipeline = ImagePipeline(settings, fetcher, pool)
            await run_stream(rt, settings, TWEETS, pipeline.handle)


def main() -> None:
    runtime.run("fetcher", FetcherSettings(), _service)


if __name__ == "__main__":
    main()
