"""Named renditions: which one is asked for, and the fetcher's whole path against an X-like image
host on loopback that serves them as X does (fitted within their box, never enlarged; a 4xx for a
rendition it does not have)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image
from prometheus_client import REGISTRY

from services.common.avro import IMAGES
from services.common.process import DeadLetter, Output
from services.fetcher.fetch import Fetcher
from services.fetcher.pipeline import ImagePipeline
from services.fetcher.renditions import (
    DOCUMENTED,
    UNDOCUMENTED,
    RenditionPlanner,
    smallest_covering,
    worth_the_url_as_given,
)
from services.fetcher.settings import FetcherSettings
from tests.fetcher.support import ALLOWED_HOST, allow_stand_ins, encode, serving

X = "https://pbs.twimg.com"
BOTH = tuple(sorted(DOCUMENTED + UNDOCUMENTED, key=lambda b: b[1]))


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1200, 800, "small"),  # 680x453
        (4032, 3024, "small"),  # 680x510
        (1080, 1920, "small"),  # portrait: 382x680
        (2040, 680, "small"),  # 3:1, 680x226
        (4000, 1000, "medium"),  # small would be 680x170
        (8000, 1000, "large"),  # medium 1200x150, large 2048x256
        (20000, 1000, "large"),  # none covers: the largest
        (200, 150, "small"),  # smaller than the input: every rendition is the original
        (600, 224, "small"),
        (None, None, "small"),  # sizes unknown
        (1200, None, "small"),
        (0, 0, "small"),
    ],
)
def test_the_smallest_documented_rendition_that_covers_the_input(
    width: int | None, height: int | None, expected: str
) -> None:
    assert smallest_covering(DOCUMENTED, width, height, 224) == expected


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1200, 800, "360x360"),  # 360x240
        (1920, 1080, "small"),  # 360x202 falls short
        (4000, 1000, "900x900"),  # 900x225
        (None, None, "small"),
    ],
)
def test_undocumented_sizes_only_when_enabled(width: int | None, height: int | None, expected: str) -> None:
    assert smallest_covering(BOTH, width, height, 224) == expected


def test_x_photo_and_preview_urls_get_a_rendition_query() -> None:
    planner = RenditionPlanner(["pbs.twimg.com"], 224)
    photo = planner.choose(f"{X}/media/GabCdEfXYZ.jpg", 1200, 800)
    assert photo is not None
    assert photo.url == f"{X}/media/GabCdEfXYZ.jpg?format=jpg&name=small"
    assert photo.name == "small"
    preview = planner.choose(f"{X}/ext_tw_video_thumb/1/pu/img/abc.jpg", 1280, 720)
    assert preview is not None
    assert preview.url.endswith("/abc.jpg?format=jpg&name=small")
    gif = planner.choose(f"{X}/tweet_video_thumb/GabC.jpg", None, None)
    assert gif is not None
    assert gif.name == "small"
    # a size already asked for is replaced, other parameters kept
    replaced = planner.choose(f"{X}/media/Gab.png?name=orig&format=png&x=1", 4000, 1000)
    assert replaced is not None
    assert replaced.url == f"{X}/media/Gab.png?x=1&format=jpg&name=medium"


@pytest.mark.parametrize("ending", ["?", "#"])
def test_a_bare_question_mark_or_hash_is_not_kept_before_the_rendition_query(ending: str) -> None:
    chosen = RenditionPlanner(["pbs.twimg.com"], 224).choose(f"{X}/media/Gab.jpg{ending}", 1200, 800)
    assert chosen is not None
    assert chosen.url == f"{X}/media/Gab.jpg?format=jpg&name=small"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/media/a.jpg",  # another host
        "https://pbs.twimg.com.evil.test/media/a.jpg",
        f"{X}/profile_images/1/a_normal.jpg",  # not a photo or a preview
        f"{X}/media/a.jpg:large",  # the legacy suffix form
        "ftp://pbs.twimg.com/media/a.jpg",
        "not a url",
    ],
)
def test_other_urls_are_fetched_as_given(url: str) -> None:
    assert RenditionPlanner(["pbs.twimg.com"], 224).choose(url, 1200, 800) is None


def test_no_rendition_hosts_turns_renditions_off() -> None:
    assert RenditionPlanner([], 224).choose(f"{X}/media/a.jpg", 1200, 800) is None


@pytest.mark.parametrize(
    ("reason", "falls_back"),
    [
        ("http_404", True),
        ("http_400", True),
        ("http_403", True),
        ("http_410", True),
        ("http_408", False),
        ("http_429", False),
        ("http_503", False),
        ("timeout", False),
        ("connect_error", False),
        ("blocked_address", False),
        ("too_large", False),
        ("http_error", False),
    ],
)
def test_only_a_4xx_for_the_rendition_sends_the_fetcher_to_the_url_as_given(reason: str, falls_back: bool) -> None:
    assert worth_the_url_as_given(reason) is falls_back


# -- the whole path, against an X-like host ----------------------------------------------------


class XLikeHost:
    """`/media/<id>.jpg` serves original `<id>` at the rendition its `name` asks for (fitted
    within the box, never enlarged, as JPEG), and the original without a name; `<id>` starting
    with `legacy-` answers 404 to any name, as an image without renditions would; `busy-`, 503."""

    def __init__(self, originals: dict[str, Image.Image]) -> None:
        self.originals = originals
        self.asked: Counter[tuple[str, str]] = Counter()
        self.app = web.Application()
        self.app.router.add_get("/media/{id}", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        self.asked[(request.path, name)] += 1
        kind, _, key = request.match_info["id"].split(".")[0].rpartition("-")
        original = self.originals[key]
        if name and kind == "legacy":
            return web.Response(status=404, text="no such rendition")
        if name and kind == "busy":
            return web.Response(status=503, text="busy")
        boxes = dict(DOCUMENTED + UNDOCUMENTED)
        if name and name not in boxes:
            return web.Response(status=400, text="unknown name")
        image = original.copy()
        if name:
            image.thumbnail((boxes[name], boxes[name]), Image.Resampling.LANCZOS)  # fits, never enlarges
        return web.Response(body=encode(image, "JPEG", quality=85), content_type="image/jpeg")


def photo(width: int, height: int) -> Image.Image:
    return Image.linear_gradient("L").resize((width, height)).convert("RGB")


@pytest.fixture
def decode_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def host() -> XLikeHost:
    return XLikeHost({"wide": photo(1600, 1000), "tall": photo(1000, 4000)})


@pytest.fixture
async def server(host: XLikeHost) -> AsyncIterator[TestServer]:
    async with serving(host) as s:
        yield s


def post(media: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tweet_id": "1800000000000000001",
        "media": [{"media_key": f"3_{i}", **m} for i, m in enumerate(media)],
        "post_url": "https://x.com/someone/status/1800000000000000001",
        "text": "",
        "author_username": "someone",
        "priority": 1,
        "ingest_ts_ms": 0,
    }


def renditions(outcome: str) -> float:
    return REGISTRY.get_sample_value("tagstream_fetch_renditions_total", {"outcome": outcome}) or 0.0


def settings(**overrides: Any) -> FetcherSettings:
    return FetcherSettings(rendition_hosts=[ALLOWED_HOST], image_encoding="raw", max_retries=0, **overrides)


async def test_the_rendition_is_fetched_and_the_record_keeps_the_posts_url(
    host: XLikeHost, server: TestServer, decode_pool: ThreadPoolExecutor
) -> None:
    s = settings()
    wide, tall = str(server.make_url("/media/wide.jpg")), str(server.make_url("/media/tall.jpg"))
    served = renditions("served")
    async with Fetcher(s, address_policy=allow_stand_ins) as fetcher:
        results = await ImagePipeline(s, fetcher, decode_pool).handle(
            post([{"url": wide, "width": 1600, "height": 1000}, {"url": tall, "width": 1000, "height": 4000}])
        )
    assert host.asked == {("/media/wide.jpg", "small"): 1, ("/media/tall.jpg", "medium"): 1}
    records = [IMAGES.decode(r.value) for r in results if isinstance(r, Output)]
    assert [r["origin"]["image_url"] for r in records] == [wide, tall]
    assert [(r["source_width"], r["source_height"]) for r in records] == [(680, 425), (300, 1200)]
    assert renditions("served") == served + 2


async def test_a_rendition_the_host_does_not_have_falls_back_to_the_url_as_given_once(
    host: XLikeHost, server: TestServer, decode_pool: ThreadPoolExecutor
) -> None:
    s = settings()
    url = str(server.make_url("/media/legacy-wide.jpg"))
    fell_back = renditions("fell_back")
    async with Fetcher(s, address_policy=allow_stand_ins) as fetcher:
        pipeline = ImagePipeline(s, fetcher, decode_pool)
        [first] = await pipeline.handle(post([{"url": url, "width": 1600, "height": 1000}]))
        [again] = await pipeline.handle(post([{"url": url, "width": 1600, "height": 1000}]))
    assert isinstance(first, Output)
    assert isinstance(again, Output)
    assert (IMAGES.decode(first.value)["source_width"], IMAGES.decode(first.value)["source_height"]) == (1600, 1000)
    # the refusal of the rendition and the original are both cached under the URL fetched
    assert host.asked == {("/media/legacy-wide.jpg", "small"): 1, ("/media/legacy-wide.jpg", ""): 1}
    assert renditions("fell_back") == fell_back + 2


async def test_a_server_error_on_the_rendition_is_not_a_reason_to_fetch_the_original(
    host: XLikeHost, server: TestServer, decode_pool: ThreadPoolExecutor
) -> None:
    s = settings()
    async with Fetcher(s, address_policy=allow_stand_ins) as fetcher:
        [result] = await ImagePipeline(s, fetcher, decode_pool).handle(
            post([{"url": str(server.make_url("/media/busy-wide.jpg")), "width": 1600, "height": 1000}])
        )
    assert isinstance(result, DeadLetter)
    assert result.reason == "http_503"
    assert host.asked == {("/media/busy-wide.jpg", "small"): 1}


async def test_undocumented_sizes_are_asked_for_only_when_enabled(
    host: XLikeHost, server: TestServer, decode_pool: ThreadPoolExecutor
) -> None:
    s = settings(undocumented_renditions=True)
    async with Fetcher(s, address_policy=allow_stand_ins) as fetcher:
        [result] = await ImagePipeline(s, fetcher, decode_pool).handle(
            post([{"url": str(server.make_url("/media/wide.jpg")), "width": 1600, "height": 1000}])
        )
    assert isinstance(result, Output)
    assert host.asked == {("/media/wide.jpg", "360x360"): 1}
    record = IMAGES.decode(result.value)
    assert (record["source_width"], record["source_height"]) == (360, 225)


async def test_other_hosts_are_fetched_as_given(
    host: XLikeHost, server: TestServer, decode_pool: ThreadPoolExecutor
) -> None:
    s = FetcherSettings(image_encoding="raw")  # the default hosts: pbs.twimg.com only
    async with Fetcher(s, address_policy=allow_stand_ins) as fetcher:
        [result] = await ImagePipeline(s, fetcher, decode_pool).handle(
            post([{"url": str(server.make_url("/media/wide.jpg")), "width": 1600, "height": 1000}])
        )
    assert isinstance(result, Output)
    assert host.asked == {("/media/wide.jpg", ""): 1}


def test_the_default_asks_x_for_renditions() -> None:
    s = FetcherSettings()
    assert s.rendition_hosts == ["pbs.twimg.com"]
    assert s.undocumented_renditions is False
