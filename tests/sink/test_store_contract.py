"""What every store implementation must do, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.common.errors import RecordError
from services.sink.store import Cursor, HashtagCount, Prediction, PredictionQuery, Store, StoreUnavailable, matches

from .records import prediction

TAGS = ("cats", "dogs", "horse", "others")


async def all_pages(store: Store, query: PredictionQuery) -> list[list[Prediction]]:
    pages = []
    while True:
        page = await store.recent(query)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        query = PredictionQuery(**{**query.__dict__, "cursor": page.next_cursor})


def keys(items: list[Prediction]) -> list[tuple[str, str]]:
    return [(p["tweet_id"], p["media_key"]) for p in items]


async def fill(store: Store, count: int) -> list[dict[str, Any]]:
    """`count` records with varied hashtags and scores; several share a classify time."""
    records = []
    for n in range(count):
        tags = tuple((TAGS[(n + i) % len(TAGS)], round(0.95 - 0.07 * ((n * 3 + i * 5) % 12), 4)) for i in range(n % 3))
        record = prediction(str(1000 + n), f"3_{n % 2}", tags=tags, ts=1_000_000 + (n // 3) * 1000)
        await store.upsert(record)
        records.append(record)
    return records


async def test_upsert_keeps_one_row_per_image_and_returns_it_as_stored(store: Store) -> None:
    first = await store.upsert(prediction(tags=(("cats", 0.9),)))
    again = await store.upsert(prediction(tags=(("dogs", 0.8), ("horse", 0.7))))  # a redelivery
    assert await store.count() == 1
    item = await store.get("1", "3_1")
    assert item == again
    assert [h["hashtag"] for h in item["hashtags"]] == ["dogs", "horse"]
    assert item["text"] == "<script>alert(1)</script> & friends"
    assert item["scores"] == {"dogs": 0.8, "horse": 0.7, "others": 0.01}
    assert item["stored_ts_ms"] >= first["stored_ts_ms"]
    assert item["end_to_end_ms"] == item["stored_ts_ms"] - item["ingest_ts_ms"]
    assert (await store.recent(PredictionQuery(hashtag="cats"))).items == []
    assert await store.get("1", "no-such-key") is None


def committed(backend: str) -> tuple[float, float]:
    """Transactions and rows the stores of `backend` have committed so far (`tagstream_sink_commit_rows`)."""
    labels = {"store": backend}
    transactions = REGISTRY.get_sample_value("tagstream_sink_commit_rows_count", labels) or 0.0
    return transactions, REGISTRY.get_sample_value("tagstream_sink_commit_rows_sum", labels) or 0.0


async def test_concurrent_upserts_share_transactions_and_each_returns_once_its_row_is_committed(store: Store) -> None:
    transactions, rows = committed(store.backend)

    async def upsert_then_read(n: int) -> bool:
        stored = await store.upsert(prediction(str(n)))
        # Read on another connection, which sees committed rows only.
        return await store.get(stored["tweet_id"], stored["media_key"]) == stored

    assert all(await asyncio.gather(*(upsert_then_read(n) for n in range(64))))
    assert await store.count() == 64
    now_transactions, now_rows = committed(store.backend)
    assert now_rows - rows == 64
    assert now_transactions - transactions <= 4  # as the sink's in-flight records arrive: together


async def test_a_row_the_database_refuses_fails_alone_among_concurrent_upserts(store: Store) -> None:
    records = [prediction(str(n)) for n in range(8)]
    records[3] |= {"image_url": None}  # NOT NULL in both stores
    outcomes = await asyncio.gather(*(store.upsert(r) for r in records), return_exceptions=True)
    failed = {n: o for n, o in enumerate(outcomes) if isinstance(o, BaseException)}
    assert list(failed) == [3]
    assert not isinstance(failed[3], StoreUnavailable)  # the row's fault: retrying would not help
    assert await store.count() == 7
    assert await store.get("3", "3_1") is None


async def test_concurrent_upserts_of_one_image_keep_the_last(store: Store) -> None:
    versions = [prediction(tags=((tag, 0.9),)) for tag in ("cats", "dogs", "horse")]
    await asyncio.gather(*(store.upsert(v) for v in versions))
    item = await store.get("1", "3_1")
    assert item is not None
    assert item["hashtags"] == [{"hashtag": "horse", "score": 0.9}]
    assert await store.hashtag_counts(since_ms=0, until_ms=None) == [HashtagCount("horse", 1)]


async def test_recent_is_newest_first_and_filtered_by_hashtag_score_and_time(store: Store) -> None:
    await store.upsert(prediction("1", tags=(("cats", 0.9),), ts=100_000))
    await store.upsert(prediction("2", tags=(("dogs", 0.95), ("cats", 0.6)), ts=200_000))
    await store.upsert(prediction("3", tags=(("dogs", 0.7),), ts=300_000))

    async def ids(**query: Any) -> list[str]:
        return [p["tweet_id"] for p in (await store.recent(PredictionQuery(**query))).items]

    assert await ids() == ["3", "2", "1"]
    assert await ids(hashtag="cats") == ["2", "1"]
    assert await ids(hashtag="cats", min_score=0.85) == ["1"]
    assert await ids(min_score=0.85) == ["2", "1"]  # any suggested hashtag that high
    assert await ids(since_ms=200_000) == ["3", "2"]
    assert await ids(until_ms=200_000) == ["1"]
    assert await ids(since_ms=150_000, until_ms=300_001, hashtag="dogs", min_score=0.8) == ["2"]
    assert await ids(limit=1) == ["3"]


async def test_pages_cover_every_match_once_in_order(store: Store) -> None:
    records = await fill(store, 40)
    for query in (PredictionQuery(limit=7), PredictionQuery(limit=3, hashtag="cats", min_score=0.5)):
        pages = await all_pages(store, query)
        served = [item for page in pages for item in page]
        expected = sorted(
            (r for r in records if matches(r, query.hashtag, query.min_score)),
            key=lambda r: (r["classify_ts_ms"], r["tweet_id"], r["media_key"]),
            reverse=True,
        )
        assert keys(served) == keys(expected)
        assert all(len(page) == query.limit for page in pages[:-1])


async def test_a_page_does_not_shift_when_newer_predictions_arrive(store: Store) -> None:
    await fill(store, 10)
    first = await store.recent(PredictionQuery(limit=4))
    assert first.next_cursor is not None
    expected_next = (await store.recent(PredictionQuery(limit=4, cursor=first.next_cursor))).items
    await store.upsert(prediction("9999", ts=9_000_000))  # newer than everything
    after = await store.recent(PredictionQuery(limit=4, cursor=Cursor.decode(first.next_cursor.encode())))
    assert keys(after.items) == keys(expected_next)


async def test_the_sql_filter_is_the_in_memory_filter(store: Store) -> None:
    records = await fill(store, 30)
    for hashtag, min_score in itertools.product((None, *TAGS, "absent"), (0.0, 0.5, 0.8, 0.95)):
        query = PredictionQuery(limit=500, hashtag=hashtag, min_score=min_score)
        served = {(p["tweet_id"], p["media_key"]) for p in (await store.recent(query)).items}
        wanted = {(r["tweet_id"], r["media_key"]) for r in records if matches(r, hashtag, min_score)}
        assert served == wanted, (hashtag, min_score)


async def test_hashtag_counts_over_a_window(store: Store) -> None:
    await store.upsert(prediction("1", tags=(("cats", 0.9),), ts=100_000))
    await store.upsert(prediction("2", tags=(("dogs", 0.95), ("cats", 0.6)), ts=200_000))
    await store.upsert(prediction("3", tags=(("dogs", 0.7),), ts=300_000))
    await store.upsert(prediction("4", tags=(("horse", 0.7),), ts=300_000))

    assert await store.hashtag_counts(since_ms=0, until_ms=None) == [
        HashtagCount("cats", 2),
        HashtagCount("dogs", 2),
        HashtagCount("horse", 1),
    ]
    assert await store.hashtag_counts(since_ms=150_000, until_ms=300_000) == [
        HashtagCount("cats", 1),
        HashtagCount("dogs", 1),
    ]
    assert await store.hashtag_counts(since_ms=0, until_ms=None, min_score=0.8) == [
        HashtagCount("cats", 1),
        HashtagCount("dogs", 1),
    ]
    assert await store.hashtag_counts(since_ms=0, until_ms=None, limit=1) == [HashtagCount("cats", 2)]
    assert await store.hashtag_counts(since_ms=400_000, until_ms=None) == []


async def test_confident_rows_by_hashtag_best_first(store: Store) -> None:
    await store.upsert(prediction("1", tags=(("cats", 0.9),)))
    await store.upsert(prediction("2", tags=(("dogs", 0.95), ("cats", 0.97))))
    await store.upsert(prediction("3", tags=(("dogs", 0.6),)))
    rows = [(r.hashtag, r.tweet_id, r.score) async for r in store.confident(0.8)]
    assert rows == [("cats", "2", 0.97), ("cats", "1", 0.9), ("dogs", "2", 0.95)]
    assert [r async for r in store.confident(0.99)] == []


async def test_watch_sees_what_is_stored_from_then_on(store: Store) -> None:
    seen: list[Prediction] = []
    arrived = asyncio.Event()

    def on_stored(item: Prediction) -> None:
        seen.append(item)
        arrived.set()

    await store.upsert(prediction("before"))
    listening = asyncio.Event()
    watcher = asyncio.create_task(store.watch(on_stored, listening))
    await asyncio.wait_for(listening.wait(), timeout=10)
    stored = await store.upsert(prediction("after", tags=(("dogs", 0.8),)))
    await asyncio.wait_for(arrived.wait(), timeout=10)
    watcher.cancel()
    assert seen == [stored]


async def test_a_hashtag_named_twice_is_kept_once_at_its_best_score(store: Store) -> None:
    stored = await store.upsert(prediction(tags=(("cats", 0.6), ("dogs", 0.7), ("cats", 0.9))))
    assert stored["hashtags"] == [{"hashtag": "cats", "score": 0.9}, {"hashtag": "dogs", "score": 0.7}]
    assert await store.hashtag_counts(since_ms=0, until_ms=None) == [HashtagCount("cats", 1), HashtagCount("dogs", 1)]
    assert keys((await store.recent(PredictionQuery(hashtag="cats", min_score=0.85))).items) == [("1", "3_1")]


HOSTILE_TEXT = "a\x00b \\0 \\\\0 \\ \x00\x00 end\x00"


async def test_a_nul_in_free_text_is_stored_and_served_as_it_came(store: Store) -> None:
    record = prediction(
        "1",
        text=HOSTILE_TEXT,
        author_username="al\x00ice\\",
        post_url="https://x.com/al\x00ice/status/1",
        image_url="https://pbs.example/\x00.jpg",
        model_name="resnet\x0050",
    )
    seen: asyncio.Queue[Prediction] = asyncio.Queue()
    listening = asyncio.Event()
    watcher = asyncio.create_task(store.watch(seen.put_nowait, listening))
    try:
        await asyncio.wait_for(listening.wait(), timeout=10)
        stored = await store.upsert(record)
        plain = await store.upsert(prediction("2", text="no nul, but \\0 and \\\\", author_username="b\\0b"))
        streamed = [await asyncio.wait_for(seen.get(), timeout=10) for _ in range(2)]
    finally:
        watcher.cancel()
    for field in ("text", "author_username", "post_url", "image_url", "model_name"):
        assert stored[field] == record[field], field
    assert plain["text"] == "no nul, but \\0 and \\\\"
    assert plain["author_username"] == "b\\0b"
    assert await store.get("1", "3_1") == stored
    assert await store.get("2", "3_1") == plain
    assert (await store.recent(PredictionQuery())).items == [plain, stored]
    assert streamed == [stored, plain]
    assert [r.image_url async for r in store.confident(0.5)] == [record["image_url"], "https://pbs.example/2_3_1.jpg"]


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        ({"media_key": "3_\x001"}, "media_key"),
        ({"tweet_id": "1\x00"}, "tweet_id"),
        ({"hashtags": [{"hashtag": "ca\x00ts", "score": 0.9}]}, "hashtags"),
        ({"scores": {"ca\x00ts": 0.9}}, "scores"),
        ({"hashtags": [{"hashtag": "cats", "score": float("nan")}]}, "nan"),
        ({"scores": {"cats": float("inf")}}, "inf"),
    ],
)
async def test_a_record_no_store_can_key_or_rank_is_refused_with_the_reason(
    store: Store, overrides: dict[str, Any], what: str
) -> None:
    with pytest.raises(RecordError) as refused:
        await store.upsert(prediction("1") | overrides)
    assert refused.value.reason == "bad_record"
    assert what in refused.value.detail
    assert await store.count() == 0
