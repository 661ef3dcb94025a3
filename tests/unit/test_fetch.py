"""The fetcher's downloads against a real HTTP server on loopback."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.fetcher.fetch import Fetcher, FetchError
from services.fetcher.settings import FetcherSettings


async def slow(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(100):
        await response.write(b"x")
        await asyncio.sleep(0.1)
    return response


async def chunked_big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # no Content-Length: the cap must hold while streaming
    await response.prepare(request)
    for _ in range(64):
        await response.write(b"\xff" * 1024)
    return response


async def ok(_: web.Request) -> web.Response:
    return web.Response(body=b"\xff\xd8\xff" + b"a" * 100)


async def big(_: web.Request) -> web.Response:
    return web.Response(body=b"a" * 40_000)


async def moved(_: web.Request) -> web.Response:
    raise web.HTTPFound("/ok")


async def redirect_loop(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    raise web.HTTPFound(f"/loop/{n + 1}")


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked-big", chunked_big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    app.router.add_get("/loop/{n}", redirect_loop)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


def settings(**overrides: object) -> FetcherSettings:
    values: dict[str, object] = {"allow_private_networks": True, "max_bytes": 32_000, "total_timeout_s": 1.0}
    values.update(overrides)
    return FetcherSettings(**values)  # type: ignore[arg-type]


async def reason(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(url)
    return info.value.reason


async def test_fetch_and_follow_a_redirect(server: TestServer) -> None:
    async with Fetcher(settings()) as fetcher:
        assert (await fetcher.fetch(str(server.make_url("/ok"))))[:3] == b"\xff\xd8\xff"
        assert (await fetcher.fetch(str(server.make_url("/moved"))))[:3] == b"\xff\xd8\xff"


async def test_refusals(server: TestServer) -> None:
    async with Fetcher(settings()) as fetcher:
        assert await reason(fetcher, str(server.make_url("/nothing"))) == "http_404"
        assert await reason(fetcher, str(server.make_url("/big"))) == "too_large"
        assert await reason(fetcher, str(server.make_url("/chunked-big"))) == "too_large"
        assert await reason(fetcher, str(server.make_url("/slow"))) == "timeout"
        assert await reason(fetcher, str(server.make_url("/loop/0"))) == "too_many_redirects"
        assert await reason(fetcher, "ftp://example.com/a.jpg") == "bad_url"


async def test_loopback_is_refused_by_default(server: TestServer) -> None:
    port = server.port
    async with Fetcher(FetcherSettings()) as fetcher:
        for url in (f"http://127.0.0.1:{port}/ok", f"http://localhost:{port}/ok", f"http://2130706433:{port}/ok"):
            assert await reason(fetcher, url) == "blocked_address", url
