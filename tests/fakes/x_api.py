"""A local server that speaks the X API v2 wire format, scripted per test.

- GET/POST /2/tweets/search/stream/rules: list, add and delete rules (`dry_run` validates only);
  rules made only of conjunction-required operators, and duplicate values, are refused as X does.
- GET /2/tweets/search/stream: one scripted `Connection` per request, in order: a 200 with a
  chunked body of newline-delimited JSON and `\\r\\n` keep-alives that then closes, breaks
  mid-line, stalls silently or holds with keep-alives; or an error status (a 429 carries the
  x-rate-limit-* headers).
- GET /2/tweets/search/recent: scripted pages per query, linked by `next_token`.

Every request must carry `Authorization: Bearer <token>`, else 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

KEEP_ALIVE = b"\r\n"
CONJUNCTION_REQUIRED = re.compile(r"^-?(has|is|lang|sample|place_country|point_radius):|^-")


@dataclass
class Connection:
    """What the server does on one stream request.

    `items` are sent in order: a dict is one JSON line, bytes go out as they are (a keep-alive
    is `KEEP_ALIVE`), a float pauses that many seconds. `end` is then one of:
    close (end the response cleanly), cut (drop the TCP connection), stall (send nothing
    more and keep the connection open), hold (send keep-alives until the client leaves).
    """

    items: list[dict[str, Any] | bytes | float] = field(default_factory=list)
    end: str = "close"
    status: int = 200
    reset_in_s: float = 1.0  # for a 429: when the window resets


def post(
    tweet_id: str,
    *,
    images: int = 1,
    tag: str = "targeted:cats",
    rule_id: str = "1",
    author: str = "42",
) -> dict[str, Any]:
    """A filtered-stream payload as X delivers it with our expansions and fields."""
    keys = [f"3_{tweet_id}_{n}" for n in range(images)]
    data: dict[str, Any] = {
        "id": tweet_id,
        "text": f"post {tweet_id} #cats",
        "author_id": author,
        "created_at": "2026-11-23T12:00:00.000Z",
        "lang": "en",
        "possibly_sensitive": False,
        "edit_history_tweet_ids": [tweet_id],
        "entities": {"hashtags": [{"start": 11, "end": 16, "tag": "cats"}]},
    }
    includes: dict[str, Any] = {"users": [{"id": author, "username": f"user{author}", "name": "A User"}]}
    if keys:
        data["attachments"] = {"media_keys": keys}
        includes["media"] = [
            {
                "media_key": key,
                "type": "photo",
                "url": f"https://pbs.twimg.com/media/{key}.jpg",
                "width": 1200,
                "height": 800,
            }
            for key in keys
        ]
    return {"data": data, "includes": includes, "matching_rules": [{"id": rule_id, "tag": tag}]}


OPERATIONAL_DISCONNECT: dict[str, Any] = {
    "errors": [
        {
            "title": "operational-disconnect",
            "disconnect_type": "UpstreamOperationalDisconnect",
            "detail": "This stream has been disconnected upstream for operational reasons.",
            "type": "https://api.twitter.com/2/problems/operational-disconnect",
        }
    ]
}


class FakeXApi:
    def __init__(
        self,
        token: str,
        *,
        rules: list[dict[str, Any]] | None = None,
        connections: list[Connection] | None = None,
        search_pages: dict[str, list[dict[str, Any]]] | None = None,
        search_rate_limited_first: bool = False,
        keep_alive_interval_s: float = 0.2,
    ) -> None:
        self.token = token
        self._ids = itertools.count(1_000_000_000_000_000_001)
        self.rules: dict[str, dict[str, Any]] = {}
        for rule in rules or []:
            stored = {"id": rule.get("id") or str(next(self._ids)), "value": rule["value"]}
            if rule.get("tag") is not None:
                stored["tag"] = rule["tag"]
            self.rules[stored["id"]] = stored
        self.connections = list(connections or [])
        self.search_pages = search_pages or {}
        self.search_rate_limited_first = search_rate_limited_first
        self.keep_alive_interval_s = keep_alive_interval_s
        # What the clients did, for the tests to check.
        self.unauthorized = 0
        self.rule_posts: list[dict[str, Any]] = []  # {"dry_run": bool, "body": ...}
        self.stream_queries: list[dict[str, str]] = []
        self.stream_served: list[str] = []  # how each stream connection ended
        self.search_queries: list[dict[str, str]] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/2/tweets/search/stream/rules", self._get_rules)
        app.router.add_post("/2/tweets/search/stream/rules", self._post_rules)
        app.router.add_get("/2/tweets/search/stream", self._stream)
        app.router.add_get("/2/tweets/search/recent", self._search)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.base_url = f"http://{bound[0]}:{bound[1]}"
        return self.base_url

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- auth ----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized += 1
            return _problem(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    # --- rules ---------------------------------------------------------------------------

    async def _get_rules(self, request: web.Request) -> web.Response:
        rules = list(self.rules.values())
        if "ids" in request.query:
            wanted = set(request.query["ids"].split(","))
            rules = [r for r in rules if r["id"] in wanted]
        answer: dict[str, Any] = {"meta": {"sent": _now_iso(), "result_count": len(rules)}}
        if rules:
            answer["data"] = rules
        return web.json_response(answer)

    async def _post_rules(self, request: web.Request) -> web.Response:
        dry_run = request.query.get("dry_run") == "true"
        body = await request.json()
        self.rule_posts.append({"dry_run": dry_run, "body": body})
        if "add" in body:
            return self._add_rules(body["add"], dry_run)
        if "delete" in body:
            return self._delete_rules(body["delete"].get("ids") or [], dry_run)
        return _problem(400, "Invalid Request", "One or more parameters to your request was invalid.")

    def _add_rules(self, wanted: list[dict[str, Any]], dry_run: bool) -> web.Response:
        created, errors = [], []
        values = {r["value"]: r["id"] for r in self.rules.values()}
        for rule in wanted:
            value = str(rule.get("value", ""))
            problem = _rule_problem(value)
            if problem:
                errors.append({"value": value, "details": [problem], "title": "UnprocessableEntity"})
            elif value in values:
                errors.append({"value": value, "id": values[value], "title": "DuplicateRule"})
            else:
                stored = {"id": str(next(self._ids)), "value": value}
                if rule.get("tag") is not None:
                    stored["tag"] = rule["tag"]
                created.append(stored)
                values[value] = stored["id"]
        if not dry_run:
            self.rules.update({r["id"]: r for r in created})
        summary = {"created": len(created), "not_created": len(errors), "valid": len(created), "invalid": len(errors)}
        answer: dict[str, Any] = {"meta": {"sent": _now_iso(), "summary": summary}}
        if created:
            answer["data"] = created
        if errors:
            answer["errors"] = errors
        return web.json_response(answer, status=201)

    def _delete_rules(self, ids: list[str], dry_run: bool) -> web.Response:
        known = [i for i in ids if i in self.rules]
        errors = [
            {"value": i, "details": ["Rule does not exist"], "title": "Invalid Request"}
            for i in ids
            if i not in self.rules
        ]
        if not dry_run:
            for rule_id in known:
                del self.rules[rule_id]
        answer: dict[str, Any] = {
            "meta": {"sent": _now_iso(), "summary": {"deleted": len(known), "not_deleted": len(errors)}}
        }
        if errors:
            answer["errors"] = errors
        return web.json_response(answer)

    # --- stream --------------------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        index = len(self.stream_queries)
        self.stream_queries.append(dict(request.query))
        script = self.connections[index] if index < len(self.connections) else Connection(end="hold")
        if script.status != 200:
            self.stream_served.append(f"http_{script.status}")
            headers = {}
            if script.status == 429:
                headers = {
                    "x-rate-limit-limit": "50",
                    "x-rate-limit-remaining": "0",
                    "x-rate-limit-reset": str(math.ceil(time.time() + script.reset_in_s)),
                }
                return _problem(429, "Too Many Requests", "Too Many Requests", headers)
            return _problem(script.status, "Service Unavailable", "Service Unavailable", headers)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for item in script.items:
                if isinstance(item, float):
                    await asyncio.sleep(item)
                elif isinstance(item, bytes):
                    await response.write(item)
                else:
                    await response.write(json.dumps(item).encode() + b"\r\n")
            self.stream_served.append(script.end)
            if script.end == "cut":
                assert request.transport is not None
                request.transport.abort()
                return response
            if script.end == "stall":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 120)
            elif script.end == "hold":
                while not self._closing.is_set():
                    await response.write(KEEP_ALIVE)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), self.keep_alive_interval_s)
            await response.write_eof()
        except ConnectionError:
            pass  # the client left
        return response

    # --- recent search -------------------------------------------------------------------

    async def _search(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.search_queries.append(query)
        if self.search_rate_limited_first and len(self.search_queries) == 1:
            headers = {
                "x-rate-limit-limit": "450",
                "x-rate-limit-remaining": "0",
                "x-rate-limit-reset": str(math.ceil(time.time() + 1)),
            }
            return _problem(429, "Too Many Requests", "Too Many Requests", headers)
        max_results = int(query.get("max_results", "10"))
        if not 10 <= max_results <= 100:
            return _problem(400, "Invalid Request", "max_results must be between 10 and 100")
        pages = self.search_pages.get(query.get("query", ""), [])
        index = int(query.get("next_token", "0") or 0)
        page = dict(pages[index]) if index < len(pages) else {}
        data = page.get("data") or []
        if len(data) > max_results:
            return _problem(500, "Fake Misconfigured", f"a page holds {len(data)} posts, more than {max_results}")
        meta: dict[str, Any] = {"result_count": len(data)}
        if data:
            meta["newest_id"], meta["oldest_id"] = data[0]["id"], data[-1]["id"]
        if index + 1 < len(pages):
            meta["next_token"] = str(index + 1)
        page["meta"] = meta
        return web.json_response(page)


def search_page(posts: list[dict[str, Any]]) -> dict[str, Any]:
    """A recent-search page (without meta) holding these stream payloads' posts and includes."""
    media = [m for p in posts for m in (p.get("includes") or {}).get("media", [])]
    users = {u["id"]: u for p in posts for u in (p.get("includes") or {}).get("users", [])}
    return {"data": [p["data"] for p in posts], "includes": {"media": media, "users": list(users.values())}}


def _rule_problem(value: str) -> str | None:
    if not value.strip():
        return "Rules must not be empty"
    if len(value) > 512:
        return "Rules must be no longer than 512 characters"
    tokens = [t for t in re.split(r"[\s()]+", value) if t and t != "OR"]
    if not any(not CONJUNCTION_REQUIRED.match(t) for t in tokens):
        return "Rules must contain at least one positive, non-stopword clause"
    return None


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"title": title, "detail": detail, "type": "about:blank", "status": status}
    return web.json_response(body, status=status, headers=headers)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
