"""`ImagePipeline.handle`: one `images` record per image that decodes, one dead letter per image
that does not, in the post's order, against a real image host."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image
from prometheus_client import REGISTRY

from services.common import pixels as pixel_formats
from services.common.avro import IMAGES
from services.common.process import DeadLetter, Output
from services.fetcher.fetch import Fetcher
from services.fetcher.pipeline import ImagePipeline
from services.fetcher.settings import FetcherSettings
from tests.fetcher.support import ImageHost, allow_stand_ins, encode, serving

FILES = {
    "red.jpg": encode(Image.new("RGB", (640, 480), (220, 20, 20)), "JPEG", quality=95),
    "grey.png": encode(Image.new("L", (300, 500), 90), "PNG"),
}


@pytest.fixture
def decode_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async with serving(ImageHost(FILES)) as s:
        yield s


def tweet(*urls: str) -> dict[str, object]:
    return {
        "tweet_id": "1700000000000000001",
        "media": [{"media_key": f"3_{i}", "url": u} for i, u in enumerate(urls)],
        "post_url": "https://x.com/someone/status/1700000000000000001",
        "text": "look #cats",
        "author_username": "someone",
        "priority": 2,
        "ingest_ts_ms": 1_700_000_000_000,
    }


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_each_image_gives_a_record_or_a_dead_letter(server: TestServer, decode_pool: ThreadPoolExecutor) -> None:
    settings = FetcherSettings(image_size=64, image_encoding="raw")
    refused_before = counter("tagstream_fetch_results_total", result="refused", reason="http_404")
    async with Fetcher(settings, address_policy=allow_stand_ins) as fetcher:
        pipeline = ImagePipeline(settings, fetcher, decode_pool)
        urls = [str(server.make_url(p)) for p in ("/files/red.jpg", "/files/missing.jpg", "/files/grey.png")]
        results = await pipeline.handle(tweet(*urls))

    red, missing, grey = results
    assert isinstance(missing, DeadLetter)
    assert missing.reason == "http_404"
    assert dict(missing.headers) == {"media_key": "3_1", "url": urls[1]}
    assert counter("tagstream_fetch_results_total", result="refused", reason="http_404") == refused_before + 1

    assert isinstance(red, Output)
    assert isinstance(grey, Output)
    assert red.topic == grey.topic == "images"
    assert red.key == "1700000000000000001"
    record = IMAGES.decode(red.value)
    assert record["origin"]["media_key"] == "3_0"
    assert record["origin"]["image_url"] == urls[0]
    assert (record["source_width"], record["source_height"], record["source_format"]) == (640, 480, "JPEG")
    assert (record["width"], record["height"], record["pixel_format"]) == (64, 64, "RGB8_HWC")
    assert record["origin"]["priority"] == 2
    assert record["origin"]["ingest_ts_ms"] == 1_700_000_000_000
    assert record["fetch_ts_ms"] >= record["origin"]["ingest_ts_ms"]
    pixels = np.frombuffer(record["pixels"], np.uint8).reshape(64, 64, 3)
    assert np.abs(pixels.astype(int) - (220, 20, 20)).max() < 10
    grey_record = IMAGES.decode(grey.value)
    assert grey_record["source_format"] == "PNG"
    assert set(grey_record["pixels"]) == {90}


async def test_by_default_the_pixels_travel_as_a_small_jpeg(
    server: TestServer, decode_pool: ThreadPoolExecutor
) -> None:
    settings = FetcherSettings(image_size=64)
    async with Fetcher(settings, address_policy=allow_stand_ins) as fetcher:
        [red] = await ImagePipeline(settings, fetcher, decode_pool).handle(
            tweet(str(server.make_url("/files/red.jpg")))
        )
    assert isinstance(red, Output)
    record = IMAGES.decode(red.value)
    assert record["pixel_format"] == "JPEG"
    assert len(record["pixels"]) < 64 * 64 * 3
    decoded = pixel_formats.decode(record["pixel_format"], record["pixels"], 64, 64)
    assert np.abs(decoded.astype(int) - (220, 20, 20)).max() < 16


async def test_a_refused_body_is_freed_at_once_not_by_the_garbage_collector(
    decode_pool: ThreadPoolExecutor,
) -> None:
    """Refusals travel as exceptions shared by every waiter of a URL; their tracebacks must not
    keep a partial body alive until the cyclic garbage collector happens to run."""
    host = ImageHost({"noise.png": encode(Image.effect_noise((1500, 1500), 80), "PNG")[:-5000]})
    settings = FetcherSettings(max_bytes=3_000_000, max_retries=0)
    async with serving(host) as server, Fetcher(settings, address_policy=allow_stand_ins) as fetcher:
        pipeline = ImagePipeline(settings, fetcher, decode_pool)
        paths = ("/chunked/2900000", "/chunked/8000000", "/files/noise.png")  # ok-sized, too large, corrupt
        await pipeline.handle(tweet(str(server.make_url("/chunked/1000"))))  # warm up the session
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            results = await pipeline.handle(tweet(*(str(server.make_url(p)) for p in paths)))
            # A decode worker may still be returning from its call (holding the body it was
            # given) when the result reaches the event loop: give it a moment, with the
            # cyclic collector still off, so only reference counting can free the bodies.
            for _ in range(100):
                after, peak = tracemalloc.get_traced_memory()
                if after - before < 500_000:
                    break
                await asyncio.sleep(0.02)
        finally:
            tracemalloc.stop()
            gc.enable()
    reasons = [r.reason for r in results if isinstance(r, DeadLetter)]
    assert reasons == ["unsupported_type", "too_large", "corrupt_image"]
    assert peak - before > 2_000_000  # the bodies were in memory
    assert after - before < 500_000  # and are all gone
