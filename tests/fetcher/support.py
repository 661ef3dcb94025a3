"""A real HTTP image host on loopback, a DNS resolver the test scripts, and the address policy
that lets one loopback address stand in for a public image host.

The fetcher runs with its default configuration (`FETCHER_ALLOW_PRIVATE_NETWORKS=false`); the
only difference is `allow_stand_ins`, passed explicitly, which allows `ALLOWED_HOST` (127.0.0.2)
besides the public addresses. Every other loopback, private or special address stays refused,
so a redirect or a DNS answer from the allowed host to 127.0.0.1 is a real SSRF attempt.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from PIL import Image

from services.fetcher.netguard import IPAddress, is_public

ALLOWED_HOST = "127.0.0.2"
OTHER_ALLOWED_HOST = "127.0.0.3"
_ALLOWED = {ipaddress.ip_address(ALLOWED_HOST), ipaddress.ip_address(OTHER_ALLOWED_HOST)}


def allow_stand_ins(address: IPAddress) -> bool:
    """The production policy (`is_public`), plus the test's stand-ins for public image hosts."""
    return address in _ALLOWED or is_public(address)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


class ScriptedResolver(AbstractResolver):
    """DNS under the test's control: a name answers with its scripted answers in turn (the last
    one repeats), as a rebinding attacker's server would. `calls` counts lookups per name."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: Counter[str] = Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        script = self.answers.get(host)
        if not script:
            raise OSError(f"{host}: no such name")
        answer = script[min(self.calls[host], len(script) - 1)]
        self.calls[host] += 1
        return [_result(host, address, port) for address in answer]

    async def close(self) -> None:
        return None


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=socket.AI_NUMERICHOST)


class ImageHost:
    """Serves `files` by path and a few misbehaviours; counts what it was asked."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/files/{name}", self._file)
        self.app.router.add_get("/status/{code}", self._status)
        self.app.router.add_get("/flaky/{failures}/{key}", self._flaky)
        self.app.router.add_get("/redirect", self._redirect)
        self.app.router.add_get("/slow/{ms}/redirect", self._slow_redirect)
        self.app.router.add_get("/slow/{ms}/status/{code}", self._slow_status)
        self.app.router.add_get("/slow/{ms}/files/{name}", self._slow_file)
        self.app.router.add_get("/trickle", self._trickle)
        self.app.router.add_get("/chunked/{size}", self._chunked)
        self.app.router.add_get("/declared/{size}", self._declared)
        self.app.router.add_get("/held/{name}", self._held)
        self.app.router.add_get("/lying/{name}", self._lying)

    def _count(self, request: web.Request) -> None:
        self.hits[request.path] += 1

    async def _file(self, request: web.Request) -> web.Response:
        self._count(request)
        data = self.files.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        response = web.Response(body=data, content_type="image/jpeg")
        if "close" in request.query:  # no keep-alive: the next request needs a new connection
            response.force_close()
        return response

    async def _status(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def _flaky(self, request: web.Request) -> web.Response:
        """503 for the first `failures` requests of `key`, then a JPEG."""
        self._count(request)
        if self.hits[request.path] <= int(request.match_info["failures"]):
            return web.Response(status=503, text="busy")
        return web.Response(body=self.files["photo.jpg"], content_type="image/jpeg")

    async def _redirect(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(status=302, headers={"Location": request.query["to"]})  # as given, valid or not

    async def _slow_redirect(self, request: web.Request) -> web.Response:
        """A redirect, after `ms` milliseconds."""
        self._count(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def _slow_status(self, request: web.Request) -> web.Response:
        """`code`, after `ms` milliseconds."""
        self._count(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(status=int(request.match_info["code"]), text="slow")

    async def _slow_file(self, request: web.Request) -> web.Response:
        """A file, after `ms` milliseconds."""
        self._count(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(body=self.files[request.match_info["name"]], content_type="image/jpeg")

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """A JPEG header, then a byte per second, for a minute."""
        self._count(request)
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        await response.write(b"\xff\xd8\xff")
        for _ in range(60):
            await asyncio.sleep(1)
            await response.write(b"\x00")
        return response

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        """`size` bytes with no Content-Length: only the cap while streaming can stop it."""
        self._count(request)
        response = web.StreamResponse()
        await response.prepare(request)
        remaining = int(request.match_info["size"])
        while remaining > 0:
            await response.write(b"\xff" * min(remaining, 64 * 1024))
            remaining -= 64 * 1024
        return response

    async def _declared(self, request: web.Request) -> web.StreamResponse:
        """Declares `size` bytes and sends only its headers before stalling."""
        self._count(request)
        response = web.StreamResponse(headers={"Content-Length": request.match_info["size"]})
        await response.prepare(request)
        await asyncio.sleep(30)
        return response

    async def _held(self, request: web.Request) -> web.Response:
        """Answers only once `release` is set; tracks how many requests wait at once."""
        self._count(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return web.Response(body=self.files[request.match_info["name"]], content_type="image/jpeg")

    async def _lying(self, request: web.Request) -> web.Response:
        """Any file under an image Content-Type."""
        self._count(request)
        return web.Response(body=self.files[request.match_info["name"]], content_type="image/png")


class ServesAnApp(Protocol):
    app: web.Application


@asynccontextmanager
async def serving(host: ServesAnApp, address: str = ALLOWED_HOST) -> AsyncIterator[TestServer]:
    server = TestServer(host.app, host=address)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a state that has no event of its own (a server's counters, a budget)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polling plain attributes
            await asyncio.sleep(0.01)


def sample_photo(size: tuple[int, int] = (320, 240)) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    return encode(image, "JPEG", quality=90)
