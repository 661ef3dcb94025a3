"""Backfill from recent search: the hashtag query first, the keyword query when the hashtag
runs dry (as the seed built its dataset), paging with `next_token`, until `limit` posts with
images. Each post becomes the same payload the stream delivers, so it is produced exactly like
a live post, or written to a file `make replay` reads."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tweepy.errors import TooManyRequests

from .dedup import RecentIds
from .payload import PayloadError, to_tweet_record
from .produce import PayloadFile, PayloadProducer
from .xapi import query_fields

log = logging.getLogger(__name__)

PAGE_MIN, PAGE_MAX = 10, 100  # recent search's bounds on max_results
HASHTAG_TEXT = re.compile(r"^\w+$")


class BackfillRateLimited(RuntimeError):
    """The rate-limit window resets later than the backfill is willing to wait."""


@dataclass(frozen=True)
class SearchQuery:
    tag: str  # the `matching_rules` tag its posts carry
    query: str


@dataclass
class QueryReport:
    query: str
    pages: int = 0
    posts: int = 0
    with_images: int = 0


@dataclass
class BackfillReport:
    limit: int
    with_images: int = 0
    queries: list[QueryReport] = field(default_factory=list)


def search_queries(term: str) -> list[SearchQuery]:
    """The hashtag query, then the keyword query without the hashtag's posts."""
    word = term.strip().removeprefix("#")
    if not HASHTAG_TEXT.match(word):
        raise ValueError(f"{term!r} is not a hashtag (letters, digits, underscores)")
    return [
        SearchQuery(f"backfill:hashtag:{word}", f"#{word} has:images -is:retweet"),
        SearchQuery(f"backfill:keyword:{word}", f"{word} -#{word} has:images -is:retweet"),
    ]


def split_page(page: Mapping[str, Any], tag: str) -> list[dict[str, Any]]:
    """One stream-shaped payload per post of a search page, with its own media and author only."""
    includes = page.get("includes") or {}
    media_by_key = {m["media_key"]: m for m in includes.get("media") or [] if isinstance(m, dict) and "media_key" in m}
    users_by_id = {u["id"]: u for u in includes.get("users") or [] if isinstance(u, dict) and "id" in u}
    payloads = []
    for post in page.get("data") or []:
        if not isinstance(post, dict):
            continue
        keys = (post.get("attachments") or {}).get("media_keys") or []
        own: dict[str, Any] = {}
        media = [media_by_key[k] for k in keys if k in media_by_key]
        if media:
            own["media"] = media
        if post.get("author_id") in users_by_id:
            own["users"] = [users_by_id[post["author_id"]]]
        payload: dict[str, Any] = {"data": post}
        if own:
            payload["includes"] = own
        payload["matching_rules"] = [{"id": "backfill", "tag": tag}]
        payloads.append(payload)
    return payloads


class Output(Protocol):
    def emit(self, line: bytes, payload: dict[str, Any]) -> bool:
        """Take one payload; True when it counts towards the limit (a new post with images)."""

    async def close(self) -> None: ...


class KafkaOutput:
    """Produces through the same path as the live stream (`source="x_search"`)."""

    def __init__(self, payloads: PayloadProducer) -> None:
        self.payloads = payloads
        self._pending: list[asyncio.Future[None]] = []

    def emit(self, line: bytes, payload: dict[str, Any]) -> bool:
        outgoing = self.payloads.prepare(line, payload)
        if outgoing is None:
            return False
        self._pending.append(self.payloads.send(outgoing))
        return outgoing.tweet_id is not None

    async def close(self) -> None:
        """Wait for every delivery; a failure raises, so the report never counts lost posts."""
        await asyncio.gather(*self._pending)
        self._pending.clear()


class FileOutput:
    """Writes the payloads to a replay file, each post once."""

    def __init__(self, file: PayloadFile, recent: RecentIds) -> None:
        self.file = file
        self.recent = recent

    def emit(self, line: bytes, payload: dict[str, Any]) -> bool:
        tweet_id = str((payload.get("data") or {}).get("id", ""))
        if not self.recent.add(tweet_id):
            return False
        self.file.write(line)
        return _has_images(payload)

    async def close(self) -> None:
        self.file.close()


Sleep = Callable[[float], Awaitable[None]]


async def backfill(
    client: Any,
    term: str,
    limit: int,
    output: Output,
    *,
    max_wait_s: float,
    sleep: Sleep = asyncio.sleep,
) -> BackfillReport:
    """Page through the queries for `term` until `limit` posts with images went to `output`.

    `client` is tweepy's async REST client answering with dicts (`XSearchClient`).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    report = BackfillReport(limit=limit)
    try:
        for search in search_queries(term):
            if report.with_images >= limit:
                break
            query_report = QueryReport(search.query)
            report.queries.append(query_report)
            next_token: str | None = None
            while report.with_images < limit:
                page_size = min(PAGE_MAX, max(PAGE_MIN, limit - report.with_images))
                page = await _page(client, search.query, page_size, next_token, max_wait_s, sleep)
                query_report.pages += 1
                for payload in split_page(page, search.tag):
                    if report.with_images >= limit:
                        break
                    query_report.posts += 1
                    line = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
                    if output.emit(line, payload):
                        query_report.with_images += 1
                        report.with_images += 1
                next_token = (page.get("meta") or {}).get("next_token")
                if not next_token:
                    break  # this query ran dry
            log.info("backfill query done", extra={"fields": vars(query_report)})
    finally:
        await output.close()
    return report


async def _page(
    client: Any, query: str, page_size: int, next_token: str | None, max_wait_s: float, sleep: Sleep
) -> Mapping[str, Any]:
    while True:
        try:
            params: dict[str, Any] = query_fields() | {"max_results": page_size}
            if next_token:
                params["next_token"] = next_token
            page: Mapping[str, Any] = await client.search_recent_tweets(query, **params)
            return page
        except TooManyRequests as exc:
            wait = max(float(exc.reset_time) - time.time(), 1.0) if exc.reset_time else 60.0
            if wait > max_wait_s:
                raise BackfillRateLimited(f"rate-limited for {wait:.0f} s, more than {max_wait_s:g} s") from exc
            log.warning("search rate-limited, waiting", extra={"fields": {"wait_s": round(wait, 1)}})
            await sleep(wait)


def _has_images(payload: dict[str, Any]) -> bool:
    try:
        return to_tweet_record(payload, priorities={}, default_priority=0, ingest_ts_ms=0) is not None
    except PayloadError:
        return False
