"""Backfill through recent search, against a local server speaking X's search API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.ingest.backfill import FileOutput, backfill, search_queries, split_page
from services.ingest.dedup import RecentIds
from services.ingest.payload import parse_line, to_tweet_record
from services.ingest.produce import PayloadFile
from services.ingest.xapi import XSearchClient
from tests.fakes.x_api import FakeXApi, post, search_page

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-bearer-token-for-search-0123456789"
HASHTAG, KEYWORD = (q.query for q in search_queries("cats"))


def ids(first: int, count: int) -> list[str]:
    return [str(1_700_000_000_000_000_000 + n) for n in range(first, first + count)]


def pages() -> dict[str, list[dict[str, Any]]]:
    """The hashtag query: 12 posts over two pages, 2 of them without images; the keyword query:
    20 more, one of them also found by the hashtag query."""
    hashtag_posts = [post(i, images=0 if n in (3, 7) else 1) for n, i in enumerate(ids(0, 12))]
    keyword_posts = [post(i) for i in ids(100, 19)] + [hashtag_posts[0]]
    return {
        HASHTAG: [search_page(hashtag_posts[:10]), search_page(hashtag_posts[10:])],
        KEYWORD: [search_page(keyword_posts[:10]), search_page(keyword_posts[10:])],
    }


@pytest.fixture
async def x_api() -> AsyncIterator[FakeXApi]:
    fake = FakeXApi(TOKEN, search_pages=pages(), search_rate_limited_first=True)
    await fake.start()
    yield fake
    await fake.close()


def read_file(path: Path) -> list[dict[str, Any]]:
    payloads = [parse_line(line) for line in path.read_bytes().splitlines()]
    return [p for p in payloads if p is not None]


def test_the_hashtag_query_comes_first_then_the_keyword_without_the_hashtag() -> None:
    hashtag, keyword = search_queries("#cats")
    assert hashtag.query.startswith("#cats ")
    assert "-#cats" in keyword.query
    assert all("has:images" in q.query for q in (hashtag, keyword))
    with pytest.raises(ValueError, match="hashtag"):
        search_queries("cats OR dogs")


def test_a_search_page_splits_into_stream_payloads_with_their_own_includes() -> None:
    first, second = post("1"), post("2", author="7")
    payloads = split_page(search_page([first, second]), "backfill:hashtag:cats")
    assert [p["data"]["id"] for p in payloads] == ["1", "2"]
    assert payloads[1]["includes"]["media"] == second["includes"]["media"]
    assert payloads[1]["includes"]["users"] == second["includes"]["users"]
    assert payloads[0]["matching_rules"] == [{"id": "backfill", "tag": "backfill:hashtag:cats"}]
    record = to_tweet_record(payloads[1], priorities={}, default_priority=0, ingest_ts_ms=1)
    assert record is not None
    assert record["author_username"] == "user7"


async def test_backfill_pages_the_hashtag_until_dry_then_the_keyword(x_api: FakeXApi, tmp_path: Path) -> None:
    out = tmp_path / "backfill.jsonl"
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    client = XSearchClient(TOKEN, base_url=x_api.base_url)
    limit = 25
    report = await backfill(
        client, "cats", limit, FileOutput(PayloadFile(out), RecentIds(1000)), max_wait_s=30, sleep=no_sleep
    )

    written = read_file(out)
    with_images = [p for p in written if p["data"].get("attachments")]
    assert report.with_images == len(with_images) == limit
    assert len({p["data"]["id"] for p in written}) == len(written)  # the shared post is written once
    tags = [p["matching_rules"][0]["tag"] for p in written]
    assert tags == sorted(tags, key=lambda t: t != "backfill:hashtag:cats")  # hashtag posts first
    assert [q.query for q in report.queries] == [HASHTAG, KEYWORD]
    assert report.queries[0].with_images == 10  # everything the hashtag had
    # paging: the 429 was retried, then each query's second page asked for with next_token
    assert len(waits) == 1
    asked = [(q["query"], q.get("next_token")) for q in x_api.search_queries[1:]]
    assert asked == [(HASHTAG, None), (HASHTAG, "1"), (KEYWORD, None), (KEYWORD, "1")]
    assert all(10 <= int(q["max_results"]) <= 100 for q in x_api.search_queries)
    assert x_api.unauthorized == 0


async def test_the_backfill_command_writes_a_file_replay_reads(x_api: FakeXApi, tmp_path: Path) -> None:
    out = tmp_path / "cats.jsonl"
    env = os.environ | {"X_BEARER_TOKEN": TOKEN, "X_API_BASE_URL": x_api.base_url, "LOG_LEVEL": "DEBUG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.ingest", "backfill", "--query", "cats", "--limit", "5", "--out", str(out),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["with_images"] == 5
    records = [to_tweet_record(p, priorities={}, default_priority=0, ingest_ts_ms=1) for p in read_file(out)]
    assert sum(r is not None for r in records) == 5
    assert TOKEN not in stderr.decode() + stdout.decode()
    assert stderr.strip()  # it logged (at DEBUG), and none of it holds the token
