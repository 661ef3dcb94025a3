"""One post in, one `images` record or one dead letter out per image: download, decode, encode.

Downloads run on the event loop; decoding runs in a pool of `FETCHER_DECODE_WORKERS` workers
(`decode_pool`), so downloads and decodes overlap and the event loop never waits on Pillow.
The same URL is downloaded and decoded once while its result is fresh, and concurrent
requests for it share that one download (`ResultCache`).

Threads, not processes, decode, and one process per core is the deployed shape. Pillow
releases the GIL while it decodes and resizes, but not while it allocates an image, encodes
the wire JPEG or runs its Python between chunks; with the event loop's own Python that is most
of the lock's time, so two decode threads in one process keep only about 1.6 of 2 cores busy.
A pool of decode processes wins that back but pays it again pickling every body and every
result across, and each worker interpreter peaks at about 75 MB. One process per core with one
decode thread each has neither cost: measured side by side (`bench/bench_fetcher.py`, 24
photos of 1200x800, 20 JPEG : 2 PNG : 2 WebP, behind 1500 distinct URLs, no server delay), two
such processes did 14-25 % more than one process with two threads in every run (236 vs 191
images/s in one), and 5-25 % more than one process with two decode processes. So deploy/k8s
gives a replica one CPU, and the decode pool follows the container's CPU limit
(`services/common/cpus.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from services.common import pixels
from services.common.avro import IMAGES
from services.common.errors import RecordError
from services.common.process import DeadLetter, Output
from services.common.timeutil import now_ms

from . import metrics
from .cache import Lookup, ResultCache
from .fetch import Fetcher, FetchError, is_transient
from .imaging import ImageError, ModelInput, decode, open_image, to_model_input
from .limits import Allowance
from .renditions import Rendition, RenditionPlanner, worth_the_url_as_given
from .settings import FetcherSettings


class ImagePipeline:
    def __init__(self, settings: FetcherSettings, fetcher: Fetcher, decode_pool: Executor) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.decode_pool = decode_pool
        lookups = {how: metrics.CACHE_LOOKUPS.labels(how.value) for how in Lookup}
        self.cache: ResultCache[ModelInput] = ResultCache(
            ttl_s=settings.cache_ttl_s,
            max_bytes=settings.cache_max_bytes,
            size_of=lambda image: len(image.pixels),
            error_ttl_s=self._refusal_ttl,
            on_lookup=lambda how: lookups[how].inc(),
        )
        metrics.CACHE_BYTES.set_function(lambda: self.cache.bytes)
        self.renditions = RenditionPlanner(
            settings.rendition_hosts, settings.image_size, undocumented=settings.undocumented_renditions
        )

    async def handle(self, tweet: dict[str, Any]) -> list[Output | DeadLetter]:
        media = tweet["media"]
        if len(media) == 1:  # most posts: no task and no gather for one image
            return [await self._one(tweet, media[0])]
        return list(await asyncio.gather(*(self._one(tweet, item) for item in media)))

    async def model_input(self, url: str) -> ModelInput:
        """The decoded image at `url`, from the cache, a download under way, or a new one."""
        return await self.cache.get_or_load(url, lambda: self._download_and_decode(url))

    async def media_input(self, media: dict[str, Any]) -> ModelInput:
        """The decoded image of a post's media item: its smallest sufficient rendition when its
        host serves them, else (or when the host has no such rendition) its URL as given. The
        cache keys on the URL actually fetched; the record keeps the post's own URL."""
        url = media["url"]
        rendition = self.renditions.choose(url, media.get("width"), media.get("height"))
        if rendition is None:
            return await self.model_input(url)
        return await self._rendition_or_as_given(url, rendition)

    async def _rendition_or_as_given(self, url: str, rendition: Rendition) -> ModelInput:
        try:
            image = await self.model_input(rendition.url)
        except FetchError as exc:
            if not worth_the_url_as_given(exc.reason):
                raise
            metrics.RENDITION_FELL_BACK.inc()
            return await self.model_input(url)
        metrics.RENDITION_SERVED.inc()
        return image

    async def _one(self, tweet: dict[str, Any], media: dict[str, Any]) -> Output | DeadLetter:
        url = media["url"]
        try:
            image = await self.media_input(media)
        except RecordError as exc:
            metrics.FETCHES.labels("refused", exc.reason).inc()
            return DeadLetter(exc.reason, exc.detail, (("media_key", media["media_key"]), ("url", url)))
        metrics.FETCHED_OK.inc()
        record = {
            "origin": origin(tweet, media),
            "fetch_ts_ms": now_ms(),
            "source_width": image.source_width,
            "source_height": image.source_height,
            "source_format": image.source_format,
            "pixel_format": image.pixel_format,
            "height": image.size,
            "width": image.size,
            "pixels": image.pixels,
        }
        return Output(self.settings.output_topic, IMAGES.encode(record), key=tweet["tweet_id"])

    async def _download_and_decode(self, url: str) -> ModelInput:
        started = time.monotonic()
        s = self.settings
        loop = asyncio.get_running_loop()
        with await self.fetcher.fetch(url) as body:  # the body's memory is given back once decoded
            metrics.FETCH_SECONDS.observe(time.monotonic() - started)
            metrics.FETCH_BYTES.inc(len(body.data))
            # The header is read in a worker too: a hostile one can be slow to parse. What it says
            # the decode will take is refused over the per-image cap, and otherwise waits for
            # room among the decodes under way before it starts. When the room is there at once
            # (nearly always), the same trip to the worker decodes: one hand-off each way and one
            # header read per image instead of two.
            with self.fetcher.decode_budget.allowance() as allowance:
                done = await loop.run_in_executor(
                    self.decode_pool,
                    decode_if_room,
                    body.data,
                    s.image_size,
                    s.max_pixels,
                    s.max_image_memory_bytes,
                    s.image_encoding,
                    allowance,
                    time.monotonic(),
                )
                if done.image is None:  # waits holding nothing open, then decodes
                    await allowance.take(done.needed)
                    image, decode_s = await loop.run_in_executor(
                        self.decode_pool, decode_timed, body.data, s.image_size, s.max_pixels, s.image_encoding
                    )
                    done = Decoded(image, done.needed, done.queued_s, decode_s)
        metrics.DECODE_SECONDS.observe(done.decode_s)
        metrics.DECODE_QUEUE_SECONDS.observe(done.queued_s)
        assert done.image is not None
        return done.image

    def _refusal_ttl(self, error: Exception) -> float | None:
        if isinstance(error, FetchError | ImageError) and not is_transient(error.reason):
            return self.settings.refusal_cache_ttl_s
        return None


def origin(tweet: dict[str, Any], media: dict[str, Any]) -> dict[str, Any]:
    """The `tagstream.Origin` of one image of a post: made once here, copied as is downstream."""
    return {
        "tweet_id": tweet["tweet_id"],
        "media_key": media["media_key"],
        "image_url": media["url"],
        "post_url": tweet["post_url"],
        "text": tweet["text"],
        "author_username": tweet["author_username"],
        "priority": tweet["priority"],
        "ingest_ts_ms": tweet["ingest_ts_ms"],
    }


@dataclass(frozen=True)
class Decoded:
    """What a decode worker hands back: the image (None: there was no room for its decode yet),
    the decode's estimated memory, the wait for the worker, and the decode's own duration."""

    image: ModelInput | None
    needed: int
    queued_s: float
    decode_s: float


def decode_if_room(
    data: bytes,
    size: int,
    max_pixels: int,
    max_memory: int,
    encoding: pixels.Encoding,
    allowance: Allowance,
    queued_at: float,
) -> Decoded:
    """In a decode worker: read the header (refused as `open_image` refuses), and when the
    decode's estimated memory fits in the shared budget at once, take it into `allowance` and
    decode; otherwise hand back the estimate, holding nothing open."""
    queued_s = time.monotonic() - queued_at
    started = time.monotonic()
    with open_image(data, size, max_pixels, max_memory) as opened:
        if not allowance.take_now(opened.memory_bytes):
            return Decoded(None, opened.memory_bytes, queued_s, 0.0)
        image = for_the_wire(decode(opened, size), size, encoding)
    return Decoded(image, opened.memory_bytes, queued_s, time.monotonic() - started)


def decode_timed(
    data: bytes, size: int, max_pixels: int, encoding: pixels.Encoding = "raw"
) -> tuple[ModelInput, float]:
    """`to_model_input` (and the wire encoding) in a decode worker, once its memory is admitted,
    with its own duration. Encoding here means once per URL, off the event loop."""
    started = time.monotonic()
    image = for_the_wire(to_model_input(data, size, max_pixels), size, encoding)
    return image, time.monotonic() - started


def for_the_wire(image: ModelInput, size: int, encoding: pixels.Encoding) -> ModelInput:
    if encoding == "raw":
        return image
    pixel_format, encoded = pixels.encode(image.pixels, size, encoding)
    return dataclasses.replace(image, pixels=encoded, pixel_format=pixel_format)
