"""The sink's HTTP server: the gallery page, the JSON API and live updates (openapi.yaml describes them)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from services.common.timeutil import now_ms

from .live import LiveHub, TooManyStreams
from .security import install_security_headers
from .settings import DEFAULT_IMAGE_SOURCES
from .store import INT64_MAX, Cursor, PredictionQuery, Store, StoreUnavailable, served_model, storable_text

log = logging.getLogger(__name__)

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_HASHTAG_LENGTH = 64
DEFAULT_COUNTS_WINDOW_MS = 24 * 3600 * 1000
HEARTBEAT_S = 15.0
#: how long an EventSource waits before reconnecting
RECONNECT_MS = 3000

STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", LiveHub)
FILES = web.AppKey("files", dict[str, tuple[bytes, str]])

# Plain ASCII digits: int() would also take "1_000", " 7 " and other scripts' digits.
_INTEGER = re.compile(r"-?[0-9]+")

# The page and its assets, read once at start: no build step, no directory listing.
_STATIC = {
    "gallery.js": "text/javascript",
    "gallery.css": "text/css",
    "icon.svg": "image/svg+xml",
}


class BadRequest(ValueError):
    """A query parameter is malformed or out of range; the message says which."""


def make_app(store: Store, hub: LiveHub, image_sources: str = DEFAULT_IMAGE_SOURCES) -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app[STORE] = store
    app[HUB] = hub
    app[FILES] = _load_files()
    install_security_headers(app, image_sources)
    app.on_shutdown.append(_close_streams)
    routes = (
        ("/", gallery_page),
        ("/static/{name}", static_file),
        ("/api/openapi.yaml", openapi_document),
        ("/api/predictions", recent_predictions),
        ("/api/predictions/{tweet_id}/{media_key}", one_prediction),
        ("/api/hashtags", hashtag_counts),
        ("/api/model", model),
        ("/api/events", live_events),
    )
    for path, handler in routes:
        app.router.add_get(path, handler, allow_head=False)
    return app


def parse_prediction_query(query: Mapping[str, str]) -> PredictionQuery:
    since_ms = _optional_int(query, "since_ms")
    until_ms = _optional_int(query, "until_ms")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise BadRequest("since_ms must be before until_ms")
    cursor = None
    if query.get("cursor"):
        try:
            cursor = Cursor.decode(query["cursor"])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    return PredictionQuery(
        limit=_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        hashtag=_hashtag(query),
        min_score=_score(query),
        since_ms=since_ms,
        until_ms=until_ms,
        cursor=cursor,
    )


async def recent_predictions(request: web.Request) -> web.Response:
    query = parse_prediction_query(request.query)
    page = await request.app[STORE].recent(query)
    next_cursor = page.next_cursor.encode() if page.next_cursor else None
    return _json({"items": page.items, "count": len(page.items), "next_cursor": next_cursor})


async def one_prediction(request: web.Request) -> web.Response:
    tweet_id = _text("tweet_id", request.match_info["tweet_id"])
    media_key = _text("media_key", request.match_info["media_key"])
    item = await request.app[STORE].get(tweet_id, media_key)
    if item is None:
        return _json({"error": "no prediction for that tweet id and media key"}, status=404)
    return _json(item)


async def hashtag_counts(request: web.Request) -> web.Response:
    now = now_ms()
    since_ms = _optional_int(request.query, "since_ms")
    until_ms = _optional_int(request.query, "until_ms")
    if since_ms is None:
        since_ms = max(0, (until_ms if until_ms is not None else now) - DEFAULT_COUNTS_WINDOW_MS)
    if until_ms is not None and since_ms >= until_ms:
        raise BadRequest("since_ms must be before until_ms")
    min_score = _score(request.query)
    limit = _int(request.query, "limit", 100, 1, MAX_LIMIT)
    counts = await request.app[STORE].hashtag_counts(
        since_ms=since_ms, until_ms=until_ms, min_score=min_score, limit=limit
    )
    return _json(
        {
            "since_ms": since_ms,
            "until_ms": until_ms,
            "min_score": min_score,
            "hashtags": [{"hashtag": c.hashtag, "count": c.count} for c in counts],
        }
    )


async def model(request: web.Request) -> web.Response:
    """The model that made the newest prediction, and whether its weights are meaningful."""
    newest = (await request.app[STORE].recent(PredictionQuery(limit=1))).items
    return _json({"model": served_model(newest[0] if newest else None)})


async def live_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one `prediction` event per newly stored prediction that passes the filters."""
    hashtag, min_score = _hashtag(request.query), _score(request.query)
    hub = request.app[HUB]
    try:
        subscription = hub.subscribe(hashtag, min_score)
    except TooManyStreams:
        return _json({"error": "too many live streams open; retry later"}, status=503, headers={"Retry-After": "10"})
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        async with asyncio.timeout(hub.write_timeout_s):
            await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        while True:
            try:
                item = await subscription.next(HEARTBEAT_S)
            except EOFError:
                break
            event = b": keep-alive\n\n" if item is None else f"event: prediction\ndata: {json.dumps(item)}\n\n".encode()
            async with asyncio.timeout(hub.write_timeout_s):
                await response.write(event)
    except TimeoutError:
        # The client stopped reading. Drop the connection: ending the response normally
        # would wait on the same full buffers.
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the client went away (aiohttp's ClientConnectionResetError is one)
    finally:
        hub.unsubscribe(subscription)
    return response


async def gallery_page(request: web.Request) -> web.Response:
    return _file(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        return _json({"error": "no such file"}, status=404)
    return _file(request, name)


async def openapi_document(request: web.Request) -> web.Response:
    return _file(request, "openapi.yaml")


def _file(request: web.Request, name: str) -> web.Response:
    body, content_type = request.app[FILES][name]
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"})


def _load_files() -> dict[str, tuple[bytes, str]]:
    package = resources.files(__package__)
    files = {name: (package.joinpath("static", name).read_bytes(), kind) for name, kind in _STATIC.items()}
    files["index.html"] = (package.joinpath("static", "index.html").read_bytes(), "text/html")
    files["openapi.yaml"] = (package.joinpath("openapi.yaml").read_bytes(), "application/yaml")
    return files


async def _close_streams(app: web.Application) -> None:
    app[HUB].close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json({"error": str(exc)}, status=400)
    except web.HTTPException as exc:  # aiohttp's own answers (no such route, ...), as JSON like ours
        if exc.status < 400:
            raise
        headers = {name: value for name, value in exc.headers.items() if name in ("Allow", "Retry-After")}
        return _json({"error": exc.reason}, status=exc.status, headers=headers)
    except StoreUnavailable as exc:
        log.warning("store unavailable", extra={"fields": {"path": request.path, "error": str(exc)}})
        return _json({"error": "the store is unavailable; retry later"}, status=503, headers={"Retry-After": "5"})


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    merged = {"Cache-Control": "no-store", **(headers or {})}
    return web.json_response(body, status=status, headers=merged)


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _optional_int(query, name)
    if value is None:
        return default
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def _optional_int(query: Mapping[str, str], name: str) -> int | None:
    """A non-negative integer the stores can hold (signed 64-bit), or None when absent."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw):
        raise BadRequest(f"{name} must be an integer")
    if raw.startswith("-"):
        raise BadRequest(f"{name} must not be negative")
    # Compared as text first: int() refuses very long digit strings, and need not see them.
    if len(raw.lstrip("0")) > len(str(INT64_MAX)) or int(raw) > INT64_MAX:
        raise BadRequest(f"{name} must be at most {INT64_MAX}")
    return int(raw)


def _score(query: Mapping[str, str]) -> float:
    raw = query.get("min_score")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest("min_score must be a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise BadRequest("min_score must be between 0 and 1")
    return value


def _hashtag(query: Mapping[str, str]) -> str | None:
    value = query.get("hashtag") or None
    if value is not None and len(value) > MAX_HASHTAG_LENGTH:
        raise BadRequest(f"hashtag must be at most {MAX_HASHTAG_LENGTH} characters")
    return None if value is None else _text("hashtag", value)


def _text(name: str, value: str) -> str:
    # A URL decodes to valid Unicode (bad UTF-8 becomes U+FFFD) but may hold %00, which
    # PostgreSQL text cannot: no stored id or hashtag has one.
    if not storable_text(value):
        raise BadRequest(f"{name} must not contain NUL characters")
    return value
