"""Hostile input: each case is refused with its specific reason (the DLQ `error` header and the
metric label), through the fetcher's whole path (`ImagePipeline.handle`), and nothing crashes.

The fetcher runs with its DEFAULT configuration (`FETCHER_ALLOW_PRIVATE_NETWORKS=false`). The
one image host the tests need listens on 127.0.0.2 and is reachable only because the test
passes an address policy that allows that one address besides public ones; a second server on
127.0.0.1 stands for an internal service and must never be reached.

Cases, one test each:

SSRF (`blocked_address`)
  1. loopback literal (127.0.0.1, anywhere in 127/8)          9. a name resolving to a private address
  2. `localhost`, through the system resolver                 10. DNS rebinding: allowed first, loopback next
  3. private RFC 1918 (10/8, 172.16/12, 192.168/16)           11. a DNS answer mixing allowed and private
  4. CGNAT (100.64/10)                                         12. redirect from the allowed host to loopback
  5. link-local, incl. the metadata address 169.254.169.254   13. redirect to the metadata address
  6. multicast, unspecified (0.0.0.0, `0`) and reserved        14. redirect to a name resolving to private
  7. IPv6: ::1, ::, fc00::/7, fe80::/10, ff00::/8, IPv4-mapped  15. the dialer refuses even an unguarded answer
  8. odd IPv4 spellings: decimal, octal, hex, short forms
Redirects and URLs
  16. too many redirects (`too_many_redirects`)    17. redirect without a usable Location (`bad_redirect`)
  18. not http(s): file, ftp, gopher (`bad_url`)
Size (`too_large`)
  19. Content-Length over the cap, refused before reading     20. a chunked body over the cap, cut while streaming
Type (`unsupported_type`), whatever the Content-Type header says
  21. SVG    22. HTML    23. other files (PDF, ZIP, ELF, empty)
Decode
  24. PNG declaring huge dimensions (`too_many_pixels`)        28. over the configured pixel limit (`too_many_pixels`)
  25. GIF with a huge logical screen (`too_many_pixels`)      29. PNG metadata (zTXt) bomb (`corrupt_image`)
  26. GIF whose frame exceeds its screen (`too_many_pixels`)  30. truncated JPEG and PNG (`corrupt_image`)
  27. JPEG declaring huge dimensions (`too_many_pixels`)      31. garbage after valid magic bytes (`corrupt_image`)
Slow server
  32. a byte per second, cut off by the total timeout (`timeout`), no memory held
Decode memory (`too_much_memory`), under the default pixel limit: a few bytes to 100 KB each
  33. lossless WebP of one colour, 7071x7071 (38 bytes)   35. palette PNG with transparency
  34. 16-bit grey PNG                                        36. GIF of one colour
  37. PNG text chunks inflating to megabytes while the header is read (`corrupt_image`)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import TCPConnector
from aiohttp.client import ClientSession
from aiohttp.client_exceptions import ClientConnectorError
from aiohttp.test_utils import TestServer
from PIL import Image

from services.common.process import DeadLetter
from services.fetcher.fetch import Fetcher
from services.fetcher.netguard import BLOCKED_MARKER, guarded_socket_factory
from services.fetcher.pipeline import ImagePipeline
from services.fetcher.settings import FetcherSettings
from tests.fetcher.support import (
    ALLOWED_HOST,
    ImageHost,
    ScriptedResolver,
    allow_stand_ins,
    encode,
    serving,
    until,
)
from tools import hostile_images

PHOTO = encode(Image.effect_noise((400, 300), 50).convert("RGB"), "JPEG")
PNG = encode(Image.effect_noise((400, 300), 50).convert("RGB"), "PNG")

FILES = {
    "photo.jpg": PHOTO,
    "bomb.png": hostile_images.png_declaring(100_000, 100_000),
    "screen-bomb.gif": hostile_images.gif_screen_bomb(),
    "frame-bomb.gif": hostile_images.gif_frame_bomb(),
    "bomb.jpg": hostile_images.jpeg_declaring(60_000, 60_000),
    "big.png": hostile_images.png_declaring(3000, 3000, rows=3000),
    "text-bomb.png": hostile_images.png_text_bomb(),
    "truncated.jpg": PHOTO[: len(PHOTO) // 2],
    "truncated.png": PNG[: len(PNG) // 2],
    "garbage.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
    "image.svg": hostile_images.SVG,
    "page.html": hostile_images.HTML,
    "doc.pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n",
    "archive.zip": b"PK\x03\x04" + b"\x00" * 60,
    "program": b"\x7fELF\x02\x01\x01" + b"\x00" * 60,
    "empty": b"",
    **{name: make() for name, make in hostile_images.DECODE_BOMBS.items()},
    "text-chunks.png": hostile_images.png_text_chunks_bomb(),
}


def default_settings(**overrides: Any) -> FetcherSettings:
    values: dict[str, Any] = {
        "max_pixels": 5_000_000,
        "retry_backoff_s": 0.01,
        "retry_backoff_max_s": 0.02,
        "dns_cache_ttl_s": 0,
        **overrides,
    }
    settings = FetcherSettings(**values)
    assert not settings.allow_private_networks, "hostile input is tested with the default protection"
    return settings


@pytest.fixture
def decode_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
async def image_host() -> AsyncIterator[TestServer]:
    async with serving(ImageHost(FILES), ALLOWED_HOST) as server:
        yield server


@pytest.fixture
async def internal() -> AsyncIterator[tuple[ImageHost, TestServer]]:
    """An internal service on 127.0.0.1 that no fetch may reach."""
    host = ImageHost({"secret": PHOTO})
    async with serving(host, "127.0.0.1") as server:
        yield host, server


class Refusals:
    def __init__(self, pipeline: ImagePipeline) -> None:
        self.pipeline = pipeline
        self.count = 0

    async def reason(self, url: str) -> str:
        """The DLQ reason `handle` gives for a post with this one image."""
        self.count += 1
        key = f"3_{self.count}"
        tweet = {
            "tweet_id": str(self.count),
            "media": [{"media_key": key, "url": url}],
            "post_url": "https://x.com/i/status/1",
            "text": "",
            "author_username": "someone",
            "priority": 1,
            "ingest_ts_ms": 0,
        }
        [result] = await self.pipeline.handle(tweet)
        assert isinstance(result, DeadLetter), f"{url} was not refused"
        assert dict(result.headers) == {"media_key": key, "url": url}
        assert result.detail
        return result.reason


@asynccontextmanager
async def refusals_with(
    pool: ThreadPoolExecutor, resolver: ScriptedResolver | None = None, **overrides: Any
) -> AsyncIterator[Refusals]:
    settings = default_settings(**overrides)
    async with Fetcher(settings, address_policy=allow_stand_ins, resolver=resolver) as fetcher:
        yield Refusals(ImagePipeline(settings, fetcher, pool))
        assert fetcher.budget.used == 0, "a refused download kept its memory"


@pytest.fixture
async def refusals(decode_pool: ThreadPoolExecutor) -> AsyncIterator[Refusals]:
    async with refusals_with(decode_pool) as r:
        yield r


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


def redirect(server: TestServer, to: str) -> str:
    return str(server.make_url("/redirect").with_query(to=to))


# SSRF -----------------------------------------------------------------------------------------


async def test_01_loopback_literals(refusals: Refusals, internal: tuple[ImageHost, TestServer]) -> None:
    host, server = internal
    for target in (f"http://127.0.0.1:{server.port}/files/secret", "http://127.8.9.10/", "https://127.0.0.1/"):
        assert await refusals.reason(target) == "blocked_address", target
    assert not host.hits


async def test_02_localhost_name(refusals: Refusals, internal: tuple[ImageHost, TestServer]) -> None:
    host, server = internal
    assert await refusals.reason(f"http://localhost:{server.port}/files/secret") == "blocked_address"
    assert not host.hits


@pytest.mark.parametrize("address", ["10.0.0.1", "10.255.255.254", "172.16.5.4", "172.31.0.1", "192.168.1.1"])
async def test_03_private_rfc1918(refusals: Refusals, address: str) -> None:
    assert await refusals.reason(f"http://{address}/a.jpg") == "blocked_address"


async def test_04_cgnat(refusals: Refusals) -> None:
    assert await refusals.reason("http://100.64.0.1/a.jpg") == "blocked_address"
    assert await refusals.reason("http://100.127.255.254/a.jpg") == "blocked_address"


@pytest.mark.parametrize("address", ["169.254.169.254", "169.254.0.1", "169.254.170.2"])
async def test_05_link_local_and_metadata(refusals: Refusals, address: str) -> None:
    assert await refusals.reason(f"http://{address}/latest/meta-data/iam/security-credentials/") == "blocked_address"


@pytest.mark.parametrize("host", ["224.0.0.1", "239.255.255.250", "0.0.0.0", "0", "240.0.0.1", "255.255.255.255"])
async def test_06_multicast_unspecified_reserved(refusals: Refusals, host: str) -> None:
    assert await refusals.reason(f"http://{host}/a.jpg") == "blocked_address"


@pytest.mark.parametrize(
    "host",
    ["[::1]", "[::]", "[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[ff02::1]", "[::ffff:127.0.0.1]",
     "[::ffff:169.254.169.254]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:10.0.0.1]", "[64:ff9b::a9fe:a9fe]",
     "[2002:a9fe:a9fe::1]"],
)  # fmt: skip
async def test_07_ipv6_forms(refusals: Refusals, host: str) -> None:
    assert await refusals.reason(f"http://{host}/a.jpg") == "blocked_address"


@pytest.mark.parametrize(
    "host",
    ["2130706433", "017700000001", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "127.1", "127.0.1",
     "0x7f.1", "2852039166", "0xa9.0xfe.0xa9.0xfe", "0251.0376.0251.0376", "10.1"],
)  # fmt: skip
async def test_08_odd_ipv4_spellings(refusals: Refusals, host: str) -> None:
    assert await refusals.reason(f"http://{host}/a.jpg") == "blocked_address"


async def test_09_a_name_resolving_to_a_private_address(decode_pool: ThreadPoolExecutor) -> None:
    resolver = ScriptedResolver({"cdn.evil.test": [["10.0.0.5"]], "meta.evil.test": [["169.254.169.254"]]})
    async with refusals_with(decode_pool, resolver) as refusals:
        assert await refusals.reason("http://cdn.evil.test/a.jpg") == "blocked_address"
        assert await refusals.reason("http://meta.evil.test/latest/meta-data/") == "blocked_address"


async def test_10_dns_rebinding(
    decode_pool: ThreadPoolExecutor, image_host: TestServer, internal: tuple[ImageHost, TestServer]
) -> None:
    """The name answers the allowed host first, the internal service next: the second is refused."""
    host, server = internal
    assert image_host.port is not None
    assert server.port is not None
    resolver = ScriptedResolver({"rebind.test": [[ALLOWED_HOST], ["127.0.0.1"]]})
    async with refusals_with(decode_pool, resolver) as refusals:
        first = await refusals.pipeline.model_input(f"http://rebind.test:{image_host.port}/files/photo.jpg")
        assert first.source_format == "JPEG"
        assert await refusals.reason(f"http://rebind.test:{server.port}/files/secret") == "blocked_address"
    assert resolver.calls["rebind.test"] == 2
    assert not host.hits


async def test_11_a_dns_answer_mixing_allowed_and_private(
    decode_pool: ThreadPoolExecutor, image_host: TestServer
) -> None:
    resolver = ScriptedResolver({"mixed.test": [[ALLOWED_HOST, "127.0.0.1"]], "mixed6.test": [[ALLOWED_HOST, "::1"]]})
    async with refusals_with(decode_pool, resolver) as refusals:
        assert await refusals.reason(f"http://mixed.test:{image_host.port}/files/photo.jpg") == "blocked_address"
        assert await refusals.reason(f"http://mixed6.test:{image_host.port}/files/photo.jpg") == "blocked_address"


async def test_12_redirect_from_an_allowed_host_to_loopback(
    refusals: Refusals, image_host: TestServer, internal: tuple[ImageHost, TestServer]
) -> None:
    host, server = internal
    assert await refusals.reason(redirect(image_host, f"http://127.0.0.1:{server.port}/files/secret")) == (
        "blocked_address"
    )
    assert await refusals.reason(redirect(image_host, f"http://[::ffff:127.0.0.1]:{server.port}/files/secret")) == (
        "blocked_address"
    )
    assert await refusals.reason(redirect(image_host, f"http://2130706433:{server.port}/files/secret")) == (
        "blocked_address"
    )
    assert not host.hits


async def test_13_redirect_to_the_metadata_address(refusals: Refusals, image_host: TestServer) -> None:
    target = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    assert await refusals.reason(redirect(image_host, target)) == "blocked_address"


async def test_14_redirect_to_a_name_resolving_to_private(
    decode_pool: ThreadPoolExecutor, image_host: TestServer, internal: tuple[ImageHost, TestServer]
) -> None:
    host, server = internal
    resolver = ScriptedResolver({"internal.test": [["127.0.0.1"]]})
    async with refusals_with(decode_pool, resolver) as refusals:
        target = f"http://internal.test:{server.port}/files/secret"
        assert await refusals.reason(redirect(image_host, target)) == "blocked_address"
    assert not host.hits


async def test_15_the_dialer_refuses_an_unguarded_answer(internal: tuple[ImageHost, TestServer]) -> None:
    """Even if a resolver's answer reached the connector unchecked, the socket is never opened."""
    host, server = internal
    resolver = ScriptedResolver({"sneaky.test": [["127.0.0.1"]]})
    connector = TCPConnector(resolver=resolver, socket_factory=guarded_socket_factory(allow_stand_ins))
    async with ClientSession(connector=connector) as session:
        with pytest.raises(ClientConnectorError) as info:
            await session.get(f"http://sneaky.test:{server.port}/files/secret")
    assert BLOCKED_MARKER in str(info.value.os_error)
    assert not host.hits


# redirects and URLs ---------------------------------------------------------------------------


async def test_16_too_many_redirects(refusals: Refusals, image_host: TestServer) -> None:
    target = url(image_host, "/files/photo.jpg")
    for _ in range(refusals.pipeline.settings.max_redirects + 1):
        target = redirect(image_host, target)
    assert await refusals.reason(target) == "too_many_redirects"


async def test_17_redirect_without_location(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/status/302")) == "bad_redirect"
    assert await refusals.reason(redirect(image_host, "http://[::1")) == "bad_redirect"


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://127.0.0.1:6379/_x"])
async def test_18_schemes_other_than_http(refusals: Refusals, target: str) -> None:
    assert await refusals.reason(target) == "bad_url"


# size -----------------------------------------------------------------------------------------


async def test_19_content_length_over_the_cap(decode_pool: ThreadPoolExecutor, image_host: TestServer) -> None:
    # the server declares the size and then stalls: only a refusal on the header avoids a timeout
    async with refusals_with(decode_pool, max_bytes=1_000_000, total_timeout_s=5) as refusals:
        assert await refusals.reason(url(image_host, "/declared/1000001")) == "too_large"


async def test_20_chunked_body_over_the_cap(decode_pool: ThreadPoolExecutor, image_host: TestServer) -> None:
    async with refusals_with(decode_pool, max_bytes=1_000_000) as refusals:
        assert await refusals.reason(url(image_host, "/chunked/5000000")) == "too_large"


# type -----------------------------------------------------------------------------------------


async def test_21_svg(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/lying/image.svg")) == "unsupported_type"


async def test_22_html(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/lying/page.html")) == "unsupported_type"


@pytest.mark.parametrize("name", ["doc.pdf", "archive.zip", "program", "empty"])
async def test_23_other_files(refusals: Refusals, image_host: TestServer, name: str) -> None:
    assert await refusals.reason(url(image_host, f"/lying/{name}")) == "unsupported_type"


# decode ---------------------------------------------------------------------------------------


async def test_24_png_declaring_huge_dimensions(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/bomb.png")) == "too_many_pixels"


async def test_25_gif_with_a_huge_screen(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/screen-bomb.gif")) == "too_many_pixels"


async def test_26_gif_frame_larger_than_its_screen(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/frame-bomb.gif")) == "too_many_pixels"


async def test_27_jpeg_declaring_huge_dimensions(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/bomb.jpg")) == "too_many_pixels"


async def test_28_over_the_configured_pixel_limit(refusals: Refusals, image_host: TestServer) -> None:
    assert refusals.pipeline.settings.max_pixels < 3000 * 3000
    assert await refusals.reason(url(image_host, "/files/big.png")) == "too_many_pixels"


async def test_29_png_metadata_bomb(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/text-bomb.png")) == "corrupt_image"


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png"])
async def test_30_truncated(refusals: Refusals, image_host: TestServer, name: str) -> None:
    assert await refusals.reason(url(image_host, f"/files/{name}")) == "corrupt_image"


async def test_31_garbage_after_magic_bytes(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/garbage.jpg")) == "corrupt_image"


# slow server ----------------------------------------------------------------------------------


async def test_32_a_byte_per_second(decode_pool: ThreadPoolExecutor) -> None:
    host = ImageHost()
    async with (
        serving(host) as server,
        refusals_with(decode_pool, total_timeout_s=1.5, read_timeout_s=10, max_retries=1) as refusals,
    ):
        reading = asyncio.create_task(refusals.reason(url(server, "/trickle")))
        budget = refusals.pipeline.fetcher.budget
        await until(lambda: budget.used > 0)  # the first bytes arrived
        assert budget.used < 10  # bytes held: what arrived, nothing more
        assert await reading == "timeout"
    assert host.hits["/trickle"] == 1  # the URL's one deadline is spent: no time is left for a retry


# decode memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(hostile_images.DECODE_BOMBS))
async def test_33_to_36_decode_bombs(decode_pool: ThreadPoolExecutor, image_host: TestServer, name: str) -> None:
    """Under the default pixel limit, refused by what their decode would take."""
    async with refusals_with(decode_pool, max_pixels=FetcherSettings().max_pixels) as refusals:
        assert await refusals.reason(url(image_host, f"/files/{name}")) == "too_much_memory"
        assert refusals.pipeline.fetcher.decode_budget.used == 0


async def test_37_png_text_chunks(refusals: Refusals, image_host: TestServer) -> None:
    assert await refusals.reason(url(image_host, "/files/text-chunks.png")) == "corrupt_image"
