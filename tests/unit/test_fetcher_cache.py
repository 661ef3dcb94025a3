"""The result cache: a URL is fetched once while fresh, concurrent requests share one download,
memory stays bounded; and the same through the pipeline against a real image host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiohttp.test_utils import TestServer

from services.fetcher.cache import ENTRY_OVERHEAD_BYTES, Lookup, ResultCache
from services.fetcher.fetch import Fetcher, FetchError
from services.fetcher.pipeline import ImagePipeline
from services.fetcher.settings import FetcherSettings
from tests.fetcher.support import ImageHost, allow_stand_ins, sample_photo, serving, until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts loads; each returns `value` (a bytes of its size) or raises `error`."""

    def __init__(self, value: bytes = b"v" * 100, error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> bytes:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


def cache(clock: Clock, max_bytes: int = 10_000, error_ttl: float | None = 5.0) -> ResultCache[bytes]:
    lookups: list[Lookup] = []
    result: ResultCache[bytes] = ResultCache(
        ttl_s=60.0,
        max_bytes=max_bytes,
        size_of=len,
        error_ttl_s=lambda exc: error_ttl if isinstance(exc, FetchError) and exc.reason == "http_404" else None,
        on_lookup=lookups.append,
        clock=clock,
    )
    result.lookups = lookups  # type: ignore[attr-defined]
    return result


async def test_a_fresh_value_is_loaded_once() -> None:
    clock, load = Clock(), Loader()
    c = cache(clock)
    assert await c.get_or_load("u", load) == load.value
    clock.now += 59
    assert await c.get_or_load("u", load) == load.value
    assert load.calls == 1
    assert c.lookups == [Lookup.MISS, Lookup.HIT]  # type: ignore[attr-defined]


async def test_an_expired_value_is_loaded_again() -> None:
    clock, load = Clock(), Loader()
    c = cache(clock)
    await c.get_or_load("u", load)
    clock.now += 61
    await c.get_or_load("u", load)
    assert load.calls == 2


async def test_concurrent_requests_share_one_load() -> None:
    clock, load = Clock(), Loader()
    load.gate.clear()
    c = cache(clock)
    waiting = [asyncio.create_task(c.get_or_load("u", load)) for _ in range(20)]
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*waiting) == [load.value] * 20
    assert load.calls == 1
    assert c.lookups.count(Lookup.COALESCED) == 19  # type: ignore[attr-defined]


async def test_one_waiter_giving_up_does_not_cancel_the_others() -> None:
    clock, load = Clock(), Loader()
    load.gate.clear()
    c = cache(clock)
    first = asyncio.create_task(c.get_or_load("u", load))
    second = asyncio.create_task(c.get_or_load("u", load))
    await asyncio.sleep(0)
    first.cancel()
    load.gate.set()
    assert await second == load.value
    assert first.cancelled()
    assert load.calls == 1


async def test_final_refusals_are_remembered_for_their_ttl() -> None:
    clock, load = Clock(), Loader(error=FetchError("http_404", "gone"))
    c = cache(clock, error_ttl=5.0)
    for _ in range(3):
        with pytest.raises(FetchError) as info:
            await c.get_or_load("u", load)
        assert info.value.reason == "http_404"
        assert info.value.detail == "gone"
    assert load.calls == 1
    clock.now += 6
    with pytest.raises(FetchError):
        await c.get_or_load("u", load)
    assert load.calls == 2


async def test_transient_failures_are_not_remembered() -> None:
    clock, load = Clock(), Loader(error=FetchError("timeout", "slow"))
    c = cache(clock)
    for _ in range(2):
        with pytest.raises(FetchError):
            await c.get_or_load("u", load)
    assert load.calls == 2
    assert len(c) == 0


async def test_least_recently_used_entries_go_first_over_the_byte_bound() -> None:
    clock = Clock()
    entry = 1000 + ENTRY_OVERHEAD_BYTES
    c = cache(clock, max_bytes=3 * entry)
    loads = {key: Loader(b"x" * 1000) for key in "abcd"}
    for key in "abc":
        await c.get_or_load(key, loads[key])
    await c.get_or_load("a", loads["a"])  # a is now the most recently used
    await c.get_or_load("d", loads["d"])  # evicts b
    assert c.bytes <= c.max_bytes
    for key in "acd":
        await c.get_or_load(key, loads[key])
    await c.get_or_load("b", loads["b"])
    assert {k: v.calls for k, v in loads.items()} == {"a": 1, "b": 2, "c": 1, "d": 1}


async def test_a_value_larger_than_the_cache_is_not_kept() -> None:
    clock, load = Clock(), Loader(b"x" * 5000)
    c = cache(clock, max_bytes=1000)
    await c.get_or_load("u", load)
    await c.get_or_load("u", load)
    assert load.calls == 2
    assert c.bytes == 0


# through the pipeline, against a real image host ---------------------------------------------


@pytest.fixture
def decode_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def host() -> ImageHost:
    return ImageHost({"photo.jpg": sample_photo()})


@pytest.fixture
async def server(host: ImageHost) -> AsyncIterator[TestServer]:
    async with serving(host) as s:
        yield s


async def test_reposts_of_one_image_are_downloaded_once(
    server: TestServer, host: ImageHost, decode_pool: ThreadPoolExecutor
) -> None:
    settings = FetcherSettings()
    async with Fetcher(settings, address_policy=allow_stand_ins) as fetcher:
        pipeline = ImagePipeline(settings, fetcher, decode_pool)
        url = str(server.make_url("/held/photo.jpg"))
        concurrent = [asyncio.create_task(pipeline.model_input(url)) for _ in range(10)]
        await until(lambda: host.in_flight > 0)
        host.release.set()
        images = await asyncio.gather(*concurrent)
        later = await pipeline.model_input(url)
    assert host.hits["/held/photo.jpg"] == 1
    assert all(image is images[0] for image in images)
    assert later is images[0]


async def test_a_refused_url_is_not_fetched_again_while_remembered(
    server: TestServer, host: ImageHost, decode_pool: ThreadPoolExecutor
) -> None:
    settings = FetcherSettings(refusal_cache_ttl_s=60)
    async with Fetcher(settings, address_policy=allow_stand_ins) as fetcher:
        pipeline = ImagePipeline(settings, fetcher, decode_pool)
        for _ in range(3):
            with pytest.raises(FetchError):
                await pipeline.model_input(str(server.make_url("/status/404")))
    assert host.hits["/status/404"] == 1
