import sqlite3
from pathlib import Path
from typing import Any

from services.sink.store import MIGRATIONS, Store, migrate


def prediction(
    tweet_id: str = "1", media_key: str = "3_1", tags: tuple[str, ...] = ("cats",), ts: int = 100
) -> dict[str, Any]:
    return {
        "tweet_id": tweet_id,
        "media_key": media_key,
        "image_url": "https://pbs.example/a.jpg",
        "post_url": f"https://x.com/i/web/status/{tweet_id}",
        "text": "<script>alert(1)</script>",
        "author_username": "alice",
        "priority": 1,
        "hashtags": [{"hashtag": t, "score": 0.9 - i * 0.1} for i, t in enumerate(tags)],
        "scores": {t: 0.5 for t in tags},
        "model_name": "resnet50",
        "model_version": "1",
        "ingest_ts_ms": ts - 50,
        "fetch_ts_ms": ts - 20,
        "classify_ts_ms": ts,
        "inference_ms": 12.5,
        "batch_size": 4,
    }


def test_upsert_keeps_one_row_per_image(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    store.upsert(prediction(tags=("cats",)))
    store.upsert(prediction(tags=("dogs", "horse")))  # a replay of the same image
    assert store.count() == 1
    item = store.get("1", "3_1")
    assert item is not None
    assert [h["hashtag"] for h in item["hashtags"]] == ["dogs", "horse"]
    assert item["text"] == "<script>alert(1)</script>"
    assert item["end_to_end_ms"] == 50
    assert store.recent(hashtag="cats") == []


def test_recent_newest_first_filtered_by_hashtag_and_score(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    store.upsert(prediction("1", tags=("cats",), ts=100))
    store.upsert(prediction("2", tags=("dogs", "cats"), ts=200))
    store.upsert(prediction("3", tags=("dogs",), ts=300))
    assert [p["tweet_id"] for p in store.recent()] == ["3", "2", "1"]
    assert [p["tweet_id"] for p in store.recent(hashtag="cats")] == ["2", "1"]
    assert [p["tweet_id"] for p in store.recent(hashtag="cats", min_score=0.85)] == ["1"]
    assert [p["tweet_id"] for p in store.recent(limit=1)] == ["3"]


def test_migrations_run_once_and_record_the_version(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert migrate(db) == len(MIGRATIONS)  # nothing left to apply, no error
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
