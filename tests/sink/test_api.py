"""The sink's HTTP server on a real socket, over each store, checked against openapi.yaml."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp.test_utils import TestServer
from openapi_spec_validator import validate as validate_spec

from services.common.timeutil import now_ms
from services.sink.api import make_app
from services.sink.live import LiveHub
from services.sink.settings import SinkSettings
from services.sink.sqlite_store import SqliteStore
from services.sink.store import Store

from .openapi import SPEC, documented_routes, validate, validate_schema
from .records import prediction

IMAGE_SOURCES = "https: http://127.0.0.1:8765"


@dataclass
class Api:
    store: Store
    hub: LiveHub
    session: aiohttp.ClientSession
    base: str
    server: TestServer

    async def get(self, path: str, template: str | None = None, **params: Any) -> tuple[int, Any]:
        """GET a JSON endpoint; the answer must be the one openapi.yaml documents for `template`."""
        async with self.session.get(self.base + path, params=params) as response:
            body = await response.json()
            validate(template or path, response.status, response.content_type, body)
            return response.status, body


@contextlib.asynccontextmanager
async def serving(store: Store, max_streams: int = 10, write_timeout_s: float = 10.0) -> AsyncIterator[Api]:
    hub = LiveHub(max_streams, write_timeout_s=write_timeout_s)
    listening = asyncio.Event()
    watcher = asyncio.create_task(store.watch(hub.publish, listening))
    server = TestServer(make_app(store, hub, IMAGE_SOURCES), host="127.0.0.1")
    await server.start_server()
    await asyncio.wait_for(listening.wait(), timeout=10)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(store, hub, session, str(server.make_url("")).rstrip("/"), server)
    finally:
        await server.close()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    async with serving(store) as running:
        yield running


def encoded_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_of(classify_ts_ms: int, tweet_id: str, media_key: str) -> str:
    """A cursor as the API encodes it; the ids are JSON string bodies, so escapes such as a lone surrogate pass."""
    return encoded_cursor(f'[{classify_ts_ms},"{tweet_id}","{media_key}"]')


def test_the_openapi_document_is_valid() -> None:
    validate_spec(SPEC)


async def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    app = make_app(SqliteStore(tmp_path / "p.db"), LiveHub(1))
    served = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}
    assert served == documented_routes()


async def test_recent_predictions_are_filtered_and_paged(api: Api) -> None:
    for n in range(7):
        tags = (("cats", 0.9 - n / 100),) if n % 2 else (("dogs", 0.7), ("cats", 0.55))
        await api.store.upsert(prediction(str(100 + n), tags=tags, ts=1_000_000 + n * 1000))

    status, body = await api.get("/api/predictions")
    assert status == 200
    assert [p["tweet_id"] for p in body["items"]] == [str(100 + n) for n in reversed(range(7))]
    assert body["next_cursor"] is None

    served: list[str] = []
    cursor = None
    while True:
        params = {"hashtag": "cats", "min_score": "0.6", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        _, page = await api.get("/api/predictions", **params)
        assert page["count"] == len(page["items"]) <= 2
        served += [p["tweet_id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert served == ["105", "103", "101"]

    _, window = await api.get("/api/predictions", since_ms="1002000", until_ms="1004000")
    assert [p["tweet_id"] for p in window["items"]] == ["103", "102"]


async def test_one_prediction_by_tweet_id_and_media_key(api: Api) -> None:
    stored = await api.store.upsert(prediction("42", "3_9", author_username=None))
    template = "/api/predictions/{tweet_id}/{media_key}"
    status, body = await api.get("/api/predictions/42/3_9", template)
    assert (status, body) == (200, stored)
    assert body["author_username"] is None
    status, body = await api.get("/api/predictions/42/3_8", template)
    assert status == 404
    assert "no prediction" in body["error"]


async def test_hashtag_counts_default_to_the_last_day(api: Api) -> None:
    now = now_ms()
    await api.store.upsert(prediction("1", tags=(("cats", 0.9),), ts=now - 1000))
    await api.store.upsert(prediction("2", tags=(("cats", 0.6), ("dogs", 0.95)), ts=now - 2000))
    await api.store.upsert(prediction("3", tags=(("horse", 0.9),), ts=now - 3 * 24 * 3600 * 1000))

    _, body = await api.get("/api/hashtags")
    assert body["hashtags"] == [{"hashtag": "cats", "count": 2}, {"hashtag": "dogs", "count": 1}]
    assert now - 24 * 3600 * 1000 <= body["since_ms"] <= now_ms() - 24 * 3600 * 1000
    assert body["until_ms"] is None

    _, body = await api.get("/api/hashtags", since_ms="0", min_score="0.8")
    assert body["hashtags"] == [
        {"hashtag": "cats", "count": 1},
        {"hashtag": "dogs", "count": 1},
        {"hashtag": "horse", "count": 1},
    ]
    _, body = await api.get("/api/hashtags", since_ms="0", until_ms=str(now - 24 * 3600 * 1000))
    assert body["hashtags"] == [{"hashtag": "horse", "count": 1}]


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/api/predictions", {"limit": "0"}, "limit"),
        ("/api/predictions", {"limit": "501"}, "limit"),
        ("/api/predictions", {"limit": "ten"}, "limit"),
        ("/api/predictions", {"min_score": "1.5"}, "min_score"),
        ("/api/predictions", {"min_score": "nan"}, "min_score"),
        ("/api/predictions", {"since_ms": "-1"}, "since_ms"),
        ("/api/predictions", {"since_ms": "20", "until_ms": "10"}, "since_ms"),
        ("/api/predictions", {"cursor": "bm9wZQ"}, "cursor"),
        ("/api/predictions", {"hashtag": "x" * 65}, "hashtag"),
        ("/api/hashtags", {"since_ms": "5", "until_ms": "5"}, "since_ms"),
        ("/api/hashtags", {"limit": "0"}, "limit"),
        ("/api/events", {"min_score": "-0.1"}, "min_score"),
        # Past what the stores hold (signed 64-bit integers, text without NUL or lone surrogates).
        ("/api/predictions", {"since_ms": str(2**63)}, "since_ms"),
        ("/api/predictions", {"until_ms": "9" * 30}, "until_ms"),
        ("/api/predictions", {"since_ms": "1" * 5000}, "since_ms"),
        ("/api/predictions", {"cursor": cursor_of(2**63, "1", "3_1")}, "cursor"),
        ("/api/predictions", {"cursor": cursor_of(-(2**63) - 1, "1", "3_1")}, "cursor"),
        ("/api/predictions", {"cursor": cursor_of(1, "\\ud800", "3_1")}, "cursor"),
        ("/api/predictions", {"cursor": cursor_of(1, "1", "3\\u0000")}, "cursor"),
        ("/api/predictions", {"cursor": encoded_cursor("[" * 2000)}, "cursor"),
        ("/api/predictions", {"hashtag": "cats\x00"}, "hashtag"),
        ("/api/predictions", {"limit": "1_0"}, "limit"),
        ("/api/predictions", {"limit": "\u0663"}, "limit"),  # an Arabic-Indic digit, which int() takes
        ("/api/hashtags", {"since_ms": str(2**63)}, "since_ms"),
        ("/api/hashtags", {"until_ms": str(2**63)}, "until_ms"),
        ("/api/events", {"hashtag": "\x00"}, "hashtag"),
    ],
)
async def test_bad_parameters_are_refused_with_the_reason(
    api: Api, path: str, params: dict[str, str], reason: str
) -> None:
    status, body = await api.get(path, **params)
    assert status == 400
    assert reason in body["error"]


@pytest.mark.parametrize(("tweet_id", "media_key"), [("%00", "3_1"), ("1", "3_1%00")])
async def test_a_nul_in_a_path_parameter_is_refused_with_the_reason(api: Api, tweet_id: str, media_key: str) -> None:
    template = "/api/predictions/{tweet_id}/{media_key}"
    url = yarl.URL(f"{api.base}/api/predictions/{tweet_id}/{media_key}", encoded=True)
    async with api.session.get(url) as response:
        body = await response.json()
        validate(template, response.status, response.content_type, body)
    assert response.status == 400
    assert "NUL" in body["error"]


async def test_a_time_window_ending_near_the_epoch_starts_at_it(api: Api) -> None:
    status, body = await api.get("/api/hashtags", until_ms="5")
    assert status == 200
    assert (body["since_ms"], body["until_ms"]) == (0, 5)


async def read_event(response: aiohttp.ClientResponse) -> tuple[str, str]:
    """The next event's type and data (comments and the retry field skipped)."""
    kind, data = "message", ""
    while True:
        line = (await response.content.readline()).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line == "" and data:
            return kind, data
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data += line.removeprefix("data: ")


async def test_the_model_is_the_one_of_the_newest_prediction_with_what_it_declared(api: Api) -> None:
    status, body = await api.get("/api/model")
    assert (status, body) == (200, {"model": None})

    await api.store.upsert(prediction("1", ts=1_000, model_name="resnet50", model_weights_meaningful=False))
    _, body = await api.get("/api/model")
    assert body == {"model": {"name": "resnet50", "version": "1", "weights_meaningful": False, "classify_ts_ms": 1_000}}

    # Another model takes over: it is the served one from its first prediction on...
    await api.store.upsert(prediction("2", ts=2_000, model_version="2", model_weights_meaningful=True))
    _, body = await api.get("/api/model")
    assert body["model"] == {"name": "resnet50", "version": "2", "weights_meaningful": True, "classify_ts_ms": 2_000}
    # ...and the earlier prediction keeps its own model's word.
    _, first = await api.get("/api/predictions/1/3_1", "/api/predictions/{tweet_id}/{media_key}")
    assert (first["model_version"], first["model_weights_meaningful"]) == ("1", False)

    # A model that does not say, or a record written before the field existed: unknown, not "meaningful".
    older_record = prediction("3", ts=3_000, model_name="other")
    del older_record["model_weights_meaningful"]
    await api.store.upsert(older_record)
    _, body = await api.get("/api/model")
    assert body["model"] == {"name": "other", "version": "1", "weights_meaningful": None, "classify_ts_ms": 3_000}


async def test_live_events_carry_the_predictions_that_pass_the_filters(api: Api) -> None:
    async with api.session.get(api.base + "/api/events", params={"hashtag": "cats", "min_score": "0.5"}) as events:
        assert events.status == 200
        assert events.content_type == "text/event-stream"
        assert (await events.content.readline()) == b"retry: 3000\n"
        assert len(api.hub) == 1  # subscribed before the stream opened
        await api.store.upsert(prediction("1", tags=(("dogs", 0.9),)))
        await api.store.upsert(prediction("2", tags=(("cats", 0.4),)))
        stored = await api.store.upsert(prediction("3", text="<img src=x onerror=alert(1)>", tags=(("cats", 0.8),)))
        kind, data = await asyncio.wait_for(read_event(events), timeout=10)
    assert kind == "prediction"
    item = json.loads(data)
    validate_schema("Prediction", item)
    assert item == stored


async def test_live_streams_are_bounded_and_end_at_shutdown(store: Store) -> None:
    async with serving(store, max_streams=1) as api, api.session.get(api.base + "/api/events") as first:
        assert first.status == 200
        await first.content.readline()
        async with api.session.get(api.base + "/api/events") as second:
            assert second.status == 503
            assert second.headers["Retry-After"] == "10"
            validate("/api/events", 503, second.content_type, await second.json())
        api.hub.close()
        rest = await asyncio.wait_for(first.content.read(), timeout=10)
    assert rest == b"\n"  # the blank line after `retry:`, then the end of the stream


async def test_security_headers_on_every_kind_of_response(api: Api) -> None:
    checks = [
        ("/", 200),
        ("/static/gallery.js", 200),
        ("/api/predictions", 200),
        ("/api/predictions?limit=0", 400),
        ("/api/predictions/1/2", 404),
        ("/no/such/route", 404),
        ("/static/settings.py", 404),
    ]
    for path, status in checks:
        async with api.session.get(api.base + path) as response:
            assert response.status == status, path
            csp = response.headers["Content-Security-Policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["default-src"] == "'none'"
            assert directives["script-src"] == "'self'"
            assert directives["style-src"] == "'self'"
            assert directives["img-src"] == f"'self' {IMAGE_SOURCES}"
            assert directives["frame-ancestors"] == "'none'"
            assert directives["require-trusted-types-for"] == "'script'"
            assert "unsafe" not in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_the_page_and_its_files(api: Api) -> None:
    expected = {
        "/": "text/html",
        "/static/gallery.js": "text/javascript",
        "/static/gallery.css": "text/css",
        "/static/icon.svg": "image/svg+xml",
        "/api/openapi.yaml": "application/yaml",
    }
    for path, content_type in expected.items():
        async with api.session.get(api.base + path) as response:
            assert response.status == 200, path
            assert response.content_type == content_type
            assert await response.read()
            template = "/static/{name}" if path.startswith("/static/") else path
            response_schema_types = SPEC["paths"][template]["get"]["responses"]["200"]["content"]
            assert content_type in response_schema_types


class InlineCode(HTMLParser):
    """Collects what a strict CSP would block in a page: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style>")
        self.problems += [f"{name}= on <{tag}>" for name in names if name == "style" or name.startswith("on")]


def test_the_page_has_no_inline_code_and_the_script_no_html_sinks() -> None:
    static = Path(__file__).resolve().parents[2] / "services" / "sink" / "static"
    parser = InlineCode()
    parser.feed((static / "index.html").read_text())
    assert parser.problems == []
    script = (static / "gallery.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "textContent = item.text" in script


def test_the_image_sources_setting_cannot_break_out_of_its_directive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SinkSettings().gallery_image_sources == "https: http://127.0.0.1:8765 http://localhost:8765"
    monkeypatch.setenv("SINK_GALLERY_IMAGE_SOURCES", "  https://pbs.twimg.com   http://127.0.0.1:9000 ")
    assert SinkSettings().gallery_image_sources == "https://pbs.twimg.com http://127.0.0.1:9000"
    for hostile in ("https:; script-src *", "https:\r\nSet-Cookie: a=b", "https:, *", " "):
        monkeypatch.setenv("SINK_GALLERY_IMAGE_SOURCES", hostile)
        with pytest.raises(ValueError, match="CSP sources"):
            SinkSettings()
    monkeypatch.delenv("SINK_GALLERY_IMAGE_SOURCES")
    monkeypatch.setenv("SINK_DATABASE_URL", "mysql://x")
    with pytest.raises(ValueError, match="postgresql"):
        SinkSettings()
