"""The fetcher's downloads against a real HTTP server on loopback: redirects, retries, timeouts,
per-host and total concurrency, the DNS cache and the memory budget.

The fetcher keeps its default configuration (private networks refused); the image host on
127.0.0.2 is reachable only through the test's address policy (see tests/fetcher/support.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from services.fetcher.fetch import Fetcher, FetchError, backoff_delay, is_retryable
from services.fetcher.settings import FetcherSettings
from tests.fetcher.support import (
    ALLOWED_HOST,
    OTHER_ALLOWED_HOST,
    ImageHost,
    ScriptedResolver,
    allow_stand_ins,
    sample_photo,
    serving,
    until,
)

PHOTO = sample_photo()


def settings(**overrides: object) -> FetcherSettings:
    values: dict[str, object] = {"total_timeout_s": 2.0, "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.02}
    values.update(overrides)
    result = FetcherSettings(**values)  # type: ignore[arg-type]
    assert not result.allow_private_networks, "these tests run with the default address protection"
    return result


def fetcher(resolver: ScriptedResolver | None = None, **overrides: object) -> Fetcher:
    return Fetcher(settings(**overrides), address_policy=allow_stand_ins, resolver=resolver)


@pytest.fixture
def host() -> ImageHost:
    return ImageHost({"photo.jpg": PHOTO})


@pytest.fixture
async def server(host: ImageHost) -> AsyncIterator[TestServer]:
    async with serving(host) as test_server:
        yield test_server


async def reason(f: Fetcher, url: str) -> str:
    with pytest.raises(FetchError) as info:
        await f.fetch(url)
    return info.value.reason


async def test_fetch_and_follow_a_redirect(server: TestServer) -> None:
    async with fetcher() as f:
        with await f.fetch(str(server.make_url("/files/photo.jpg"))) as body:
            assert body.data == PHOTO
            assert f.budget.used == len(PHOTO)  # held until the caller is done with it
        assert f.budget.used == 0
        target = server.make_url("/files/photo.jpg")
        with await f.fetch(str(server.make_url("/redirect").with_query(to=str(target)))) as body:
            assert body.data == PHOTO


async def test_a_404_is_not_retried(server: TestServer, host: ImageHost) -> None:
    async with fetcher(max_retries=3) as f:
        assert await reason(f, str(server.make_url("/status/404"))) == "http_404"
    assert host.hits["/status/404"] == 1


async def test_5xx_is_retried_until_it_succeeds(server: TestServer, host: ImageHost) -> None:
    async with fetcher(max_retries=2) as f:
        with await f.fetch(str(server.make_url("/flaky/2/a"))) as body:
            assert body.data == PHOTO
    assert host.hits["/flaky/2/a"] == 3


async def test_5xx_retries_are_bounded(server: TestServer, host: ImageHost) -> None:
    async with fetcher(max_retries=1) as f:
        assert await reason(f, str(server.make_url("/flaky/5/b"))) == "http_503"
    assert host.hits["/flaky/5/b"] == 2


async def test_a_timeout_is_retried_while_the_url_has_time_left(server: TestServer, host: ImageHost) -> None:
    # a server silent after its headers: each try ends on the read timeout, well within the URL's
    async with fetcher(max_retries=1, read_timeout_s=0.3, total_timeout_s=5) as f:
        assert await reason(f, str(server.make_url("/declared/1000"))) == "timeout"
        assert f.budget.used == 0
    assert host.hits["/declared/1000"] == 2


async def test_one_deadline_covers_every_redirect(server: TestServer, host: ImageHost) -> None:
    """Three redirects of 0.6 s each: every hop is within the total timeout, their sum is not."""
    target = str(server.make_url("/files/photo.jpg"))
    for _ in range(3):
        target = str(server.make_url("/slow/600/redirect").with_query(to=target))
    async with fetcher(max_redirects=3, total_timeout_s=1.0, max_retries=0) as f:
        assert await reason(f, target) == "timeout"
    assert host.hits["/slow/600/redirect"] <= 2  # the second hop ran out of the URL's time
    assert host.hits["/files/photo.jpg"] == 0


async def test_one_deadline_covers_every_retry(server: TestServer, host: ImageHost) -> None:
    """A 503 after 0.6 s, tried again: the second try has only what the first left of the URL's time."""
    async with fetcher(max_retries=3, total_timeout_s=1.0) as f:
        assert await reason(f, str(server.make_url("/slow/600/status/503"))) == "timeout"
    assert host.hits["/slow/600/status/503"] == 2


async def test_no_retry_starts_once_the_deadline_is_spent(server: TestServer, host: ImageHost) -> None:
    """A 503 that took the URL's whole time is the answer: no retry that could only time out."""
    async with fetcher(max_retries=3, total_timeout_s=0.5) as f:
        assert await reason(f, str(server.make_url("/slow/500/status/503"))) in {"timeout", "http_503"}
    assert host.hits["/slow/500/status/503"] == 1


async def test_a_wait_for_a_connection_slot_is_not_spent_from_the_deadline(server: TestServer) -> None:
    """One slot for the host: the second URL waits 0.7 s for it, then takes 0.5 s with the server,
    within its 1 s although 1.2 s have passed since it was asked for."""
    slow_file = str(server.make_url("/slow/700/files/photo.jpg"))
    quick_enough = str(server.make_url("/slow/500/files/photo.jpg"))
    async with fetcher(max_connections_per_host=1, total_timeout_s=1.0, max_retries=0) as f:
        first = asyncio.create_task(f.fetch(slow_file))
        await asyncio.sleep(0.05)  # the first holds the slot
        second = await f.fetch(quick_enough)
        assert second.data == PHOTO
        second.release()
        (await first).release()


async def test_read_timeout_ends_a_silent_server(server: TestServer) -> None:
    async with fetcher(max_retries=0, read_timeout_s=0.3, total_timeout_s=20) as f:
        assert await reason(f, str(server.make_url("/declared/1000"))) == "timeout"


async def test_a_refused_connection_is_not_retried(unused_tcp_port: int) -> None:
    async with fetcher(max_retries=3) as f:
        assert await reason(f, f"http://{ALLOWED_HOST}:{unused_tcp_port}/x.jpg") == "connect_error"
    assert not is_retryable("connect_error")


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    assert [backoff_delay(n, 0.25, 4.0, 1.0) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(3, 0.25, 4.0, 0.5) == 1.0
    assert backoff_delay(3, 0.25, 4.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [("timeout", True), ("http_500", True), ("http_503", True), ("http_599", True), ("http_404", False),
     ("http_429", False), ("too_large", False), ("blocked_address", False), ("http_error", False)],
)  # fmt: skip
def test_only_timeouts_and_5xx_are_retryable(reason: str, retryable: bool) -> None:
    assert is_retryable(reason) is retryable


async def test_requests_to_one_host_are_bounded(server: TestServer, host: ImageHost) -> None:
    async with fetcher(max_connections_per_host=3) as f:
        tasks = [asyncio.create_task(f.fetch(str(server.make_url("/held/photo.jpg")))) for _ in range(10)]
        await until(lambda: host.in_flight == 3)
        await asyncio.sleep(0.2)  # room for a fourth request to arrive, were it let through
        assert host.in_flight == 3
        host.release.set()
        for body in await asyncio.gather(*tasks):
            body.release()
    assert host.max_in_flight == 3
    assert host.hits["/held/photo.jpg"] == 10
    assert len(f.limiter) == 0  # no per-host state left behind


async def test_requests_in_all_are_bounded(host: ImageHost) -> None:
    other = ImageHost(host.files)
    other.release = host.release
    async with (
        serving(host, ALLOWED_HOST) as one,
        serving(other, OTHER_ALLOWED_HOST) as two,
        fetcher(max_connections=4, max_connections_per_host=4) as f,
    ):
        paths = [s.make_url("/held/photo.jpg") for s in (one, two) for _ in range(5)]
        tasks = [asyncio.create_task(f.fetch(str(u))) for u in paths]
        await until(lambda: host.in_flight + other.in_flight == 4)
        await asyncio.sleep(0.2)  # room for a fifth request to arrive, were it let through
        assert host.in_flight + other.in_flight == 4
        host.release.set()
        for body in await asyncio.gather(*tasks):
            body.release()


async def test_dns_answers_are_cached_through_the_guarded_resolver(server: TestServer) -> None:
    resolver = ScriptedResolver({"images.test": [[ALLOWED_HOST]]})
    url = f"http://images.test:{server.port}/files/photo.jpg?close"
    async with fetcher(resolver, dns_cache_ttl_s=60) as f:
        for _ in range(3):
            (await f.fetch(url)).release()
    assert resolver.calls["images.test"] == 1


async def test_dns_cache_can_be_turned_off(server: TestServer) -> None:
    resolver = ScriptedResolver({"images.test": [[ALLOWED_HOST]]})
    url = f"http://images.test:{server.port}/files/photo.jpg?close"
    async with fetcher(resolver, dns_cache_ttl_s=0) as f:
        for _ in range(3):
            (await f.fetch(url)).release()
    assert resolver.calls["images.test"] == 3


async def test_bodies_in_memory_stay_within_the_budget(server: TestServer) -> None:
    size = len(PHOTO)
    async with fetcher(max_bytes=size + 1, max_buffered_bytes=2 * size + 1) as f:
        first = await f.fetch(str(server.make_url("/files/photo.jpg")))
        second = await f.fetch(str(server.make_url("/files/photo.jpg")))
        third = asyncio.create_task(f.fetch(str(server.make_url("/files/photo.jpg"))))
        await asyncio.sleep(0.2)
        assert not third.done(), "a third body would exceed the budget"
        assert f.budget.used == 2 * size
        first.release()
        (await third).release()
        second.release()
        assert f.budget.used == 0


async def test_a_wait_for_the_budget_counts_against_the_total_timeout(server: TestServer) -> None:
    size = len(PHOTO)
    async with fetcher(max_bytes=size + 1, max_buffered_bytes=size + 1, total_timeout_s=0.5, max_retries=0) as f:
        with await f.fetch(str(server.make_url("/files/photo.jpg"))):
            assert await reason(f, str(server.make_url("/files/photo.jpg"))) == "timeout"
        assert f.budget.used == 0


async def test_failed_downloads_give_their_budget_back(server: TestServer) -> None:
    async with fetcher(max_bytes=100_000, max_retries=0, total_timeout_s=0.5) as f:
        assert await reason(f, str(server.make_url("/chunked/300000"))) == "too_large"
        assert await reason(f, str(server.make_url("/declared/50000"))) == "timeout"
        assert f.budget.used == 0
