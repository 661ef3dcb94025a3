"""tweepy's asyncio clients, pointed at a configurable X API and reconnecting the way X asks.

Why subclasses: tweepy 4.17 builds every URL from the literal "https://api.twitter.com", in
`AsyncBaseClient.request` (rules, search) and in `AsyncStreamingClient._connect` (the stream),
so `X_API_BASE_URL` can only reach it by overriding those two methods.

- `request` is replaced by a small equivalent that sends to `base_url`, writes booleans the
  way X reads them (`dry_run=true`; aiohttp refuses bool query values) and logs no headers
  (tweepy's logs the Authorization header at DEBUG level).
- The stream's connection loop replaces tweepy's `AsyncBaseStream._connect`, which fixes its
  waits in local variables, ignores `x-rate-limit-reset` on a 429 and notices a stall only
  through a fixed 21 s socket timeout; an unattended service needs all three configurable.

What stays tweepy's: parameter handling, the rule and search methods, `filter()`, and the
stream callbacks `on_connect`, `on_data`, `on_keep_alive`, `on_disconnect`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from tweepy.asynchronous import AsyncClient, AsyncStreamingClient
from tweepy.errors import (
    BadRequest,
    Forbidden,
    HTTPException,
    NotFound,
    TooManyRequests,
    TweepyException,
    TwitterServerError,
    Unauthorized,
)

from . import metrics as ingest_metrics
from .backoff import Backoff, BackoffPolicy, parse_reset_header
from .lines import LineReader

# What every record needs from X: the media (photos by url, videos and GIFs by preview),
# the author, and the post's own fields.
EXPANSIONS = ("attachments.media_keys", "author_id")
MEDIA_FIELDS = ("url", "preview_image_url", "type", "width", "height")
TWEET_FIELDS = ("created_at", "lang", "entities", "possibly_sensitive", "attachments", "author_id")
USER_FIELDS = ("username", "name", "verified", "protected")

READ_BUFFER_BYTES = 1 << 18  # aiohttp's buffer; lines longer than it are read in pieces (lines.py)


def query_fields() -> dict[str, list[str]]:
    """The expansions and fields, as keyword arguments of tweepy's `filter` and `search_recent_tweets`."""
    return {
        "expansions": list(EXPANSIONS),
        "media_fields": list(MEDIA_FIELDS),
        "tweet_fields": list(TWEET_FIELDS),
        "user_fields": list(USER_FIELDS),
    }


class _BaseUrlRequests:
    """tweepy's REST calls, sent to `base_url` with the app-only bearer token."""

    base_url: str
    bearer_token: str
    user_agent: str
    request_timeout_s: float

    async def request(
        self,
        method: str,
        route: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        user_auth: bool = False,
    ) -> aiohttp.ClientResponse:
        if user_auth:
            raise TweepyException("only app-only (bearer token) authentication is supported")
        headers = {"User-Agent": self.user_agent, "Authorization": f"Bearer {self.bearer_token}"}
        query = {name: _query_value(value) for name, value in (params or {}).items()}
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, self.base_url + route, params=query, json=json, headers=headers) as response,
        ):
            body = await response.read()
        if 200 <= response.status < 300:
            return response  # tweepy reads the (already loaded) body with `response.json()`
        raise _http_error(response, body, _endpoint_label(route))


class XStreamingClient(_BaseUrlRequests, AsyncStreamingClient):  # type: ignore[misc]
    """tweepy's streaming client on `base_url`, with X's reconnect schedule and stall detection.

    Subclasses implement the callbacks; `on_connection_lost` is called once per ended
    connection attempt, before the wait it announces.
    """

    def __init__(
        self,
        bearer_token: str,
        *,
        base_url: str,
        backoff: BackoffPolicy,
        stall_timeout_s: float,
        request_timeout_s: float = 30.0,
        max_line_bytes: int = 1 << 20,
    ) -> None:
        super().__init__(bearer_token, return_type=dict)
        self.base_url = base_url.rstrip("/")
        self.backoff_policy = backoff
        self.stall_timeout_s = stall_timeout_s
        self.max_line_bytes = max_line_bytes
        self.request_timeout_s = request_timeout_s
        self._reconnect_reason: str | None = None

    def request_reconnect(self, reason: str) -> None:
        """Drop the current connection after the line being handled (e.g. an operational disconnect)."""
        self._reconnect_reason = reason

    async def on_connection_lost(self, lost: ConnectionLost) -> None:
        """A connection attempt ended; the client waits `lost.wait_s` and connects again."""

    async def on_oversized_line(self, prefix: bytes, length: int) -> None:
        """A line longer than `max_line_bytes` was read past; `prefix` is its start."""

    async def _connect(self, method: str, endpoint: str, params: dict[str, Any] | None = None, **_: Any) -> None:
        url = f"{self.base_url}/2/tweets/{endpoint}/stream"
        headers = {"User-Agent": self.user_agent, "Authorization": f"Bearer {self.bearer_token}"}
        query = {name: _query_value(value) for name, value in (params or {}).items()}
        backoff = Backoff(self.backoff_policy)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.stall_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout, read_bufsize=READ_BUFFER_BYTES) as session:
                while True:
                    lost = await self._attempt(session, method, url, query, headers, backoff)
                    await self.on_connection_lost(lost)
                    await asyncio.sleep(lost.wait_s)
        finally:
            await self.on_disconnect()

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        query: dict[str, str | int | float],
        headers: dict[str, str],
        backoff: Backoff,
    ) -> ConnectionLost:
        self._reconnect_reason = None
        try:
            response = await _within(self.stall_timeout_s, session.request(method, url, params=query, headers=headers))
            async with response:
                if response.status != 200:
                    return await self._refused(response, backoff)
                await self.on_connect()
                return await self._read(response, backoff)
        except _Stalled as exc:
            return ConnectionLost("stall", backoff.after_network_error(), detail=str(exc))
        except (aiohttp.ClientError, OSError) as exc:
            return ConnectionLost("network_error", backoff.after_network_error(), detail=_describe(exc))

    async def _read(self, response: aiohttp.ClientResponse, backoff: Backoff) -> ConnectionLost:
        lines = LineReader(response.content, self.max_line_bytes)
        while True:
            line = await _within(self.stall_timeout_s, lines.next())
            if not line.complete:
                # EOF; a line cut short means the connection broke mid-post.
                reason = "closed" if not line.data else "network_error"
                return ConnectionLost(reason, backoff.after_network_error(), detail="the server ended the stream")
            backoff.reset()
            payload = line.data.strip()
            if line.oversized:
                await self.on_oversized_line(line.data, line.length)
            elif payload:
                await self.on_data(payload)
            else:
                await self.on_keep_alive()
            if self._reconnect_reason is not None:
                return ConnectionLost(self._reconnect_reason, backoff.after_network_error())

    async def _refused(self, response: aiohttp.ClientResponse, backoff: Backoff) -> ConnectionLost:
        status = response.status
        try:
            detail = (await _within(self.stall_timeout_s, response.text(errors="replace")))[:500]
        except (_Stalled, aiohttp.ClientError):
            detail = ""
        if status == 429:
            reset = parse_reset_header(response.headers.get("x-rate-limit-reset"))
            return ConnectionLost("rate_limited", backoff.after_rate_limit(reset, time.time()), status, detail)
        return ConnectionLost("http_error", backoff.after_http_error(), status, detail)


class XSearchClient(_BaseUrlRequests, AsyncClient):  # type: ignore[misc]
    """tweepy's REST client on `base_url` (recent search for backfill); answers are dicts."""

    def __init__(self, bearer_token: str, *, base_url: str, request_timeout_s: float = 30.0) -> None:
        super().__init__(bearer_token, return_type=dict)
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s


@dataclass(frozen=True)
class ConnectionLost:
    """Why a connection attempt ended and how long to wait before the next one.

    reason: closed (the server ended a good stream), network_error, stall,
    operational_disconnect, http_error, rate_limited.
    """

    reason: str
    wait_s: float
    status: int | None = None
    detail: str = ""


class _Stalled(Exception):
    """Neither data nor a keep-alive arrived within the stall timeout."""


async def _within(seconds: float, awaitable: Any) -> Any:
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except aiohttp.ClientError:
        raise  # aiohttp's own timeouts are connection errors, not stalls
    except TimeoutError as exc:
        raise _Stalled(f"nothing received for {seconds:g} s") from exc


def _query_value(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return value
    return str(value)


def _endpoint_label(route: str) -> str:
    if route.endswith("/stream/rules"):
        return "rules"
    if route.endswith("/search/recent"):
        return "search"
    return "other"


def _http_error(response: aiohttp.ClientResponse, body: bytes, endpoint: str) -> HTTPException:
    ingest_metrics.HTTP_ERRORS.labels(endpoint, str(response.status)).inc()
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if response.status == 429:
        ingest_metrics.RATE_LIMITS.labels(endpoint).inc()
        reset = parse_reset_header(response.headers.get("x-rate-limit-reset"))
        return TooManyRequests(response, response_json=answer, reset_time=None if reset is None else int(reset))
    by_status: dict[int, type[HTTPException]] = {
        400: BadRequest,
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
    }
    error_type = by_status.get(response.status, TwitterServerError if response.status >= 500 else HTTPException)
    return error_type(response, response_json=answer)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
