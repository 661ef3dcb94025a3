"""The SQLite store's own concerns: migrations of existing files, WAL; the shared behaviour is in tests/sink."""

import json
import sqlite3
from pathlib import Path

import pytest

from services.sink.sqlite_store import MIGRATIONS, SqliteStore, migrate
from services.sink.store import Cursor, PredictionQuery, matches
from tests.sink.records import prediction


def version_one_file(path: Path) -> None:
    """A database as the first release of the sink left it, with one prediction."""
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    record = prediction("7", "3_7", tags=(("dogs", 0.8), ("cats", 0.6)), ts=5000)
    db.execute(
        "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *(record[c] for c in ("tweet_id", "media_key", "image_url", "post_url", "text", "author_username")),
            record["priority"],
            json.dumps(record["hashtags"]),
            json.dumps(record["scores"]),
            record["model_name"],
            record["model_version"],
            record["ingest_ts_ms"],
            record["fetch_ts_ms"],
            record["classify_ts_ms"],
            6000,
        ),
    )
    db.executemany(
        "INSERT INTO prediction_hashtags VALUES (?, ?, ?, ?)",
        [("7", "3_7", h["hashtag"], h["score"]) for h in record["hashtags"]],
    )
    db.commit()
    db.close()


async def test_a_version_one_file_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    version_one_file(path)
    store = SqliteStore(path)
    item = await store.get("7", "3_7")
    assert item is not None
    assert item["end_to_end_ms"] == 6000 - item["ingest_ts_ms"]
    assert [p["tweet_id"] for p in (await store.recent(PredictionQuery(hashtag="cats", since_ms=5000))).items] == ["7"]
    assert (await store.recent(PredictionQuery(min_score=0.7))).items == [item]  # top score 0.8, carried over
    assert (await store.recent(PredictionQuery(min_score=0.9))).items == []
    counts = await store.hashtag_counts(since_ms=5000, until_ms=5001)
    assert [(c.hashtag, c.count) for c in counts] == [("cats", 1), ("dogs", 1)]
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert migrate(db) == len(MIGRATIONS)  # nothing left to apply, no error
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    SqliteStore(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(path)


def test_a_failed_migration_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.db"
    version_one_file(path)
    monkeypatch.setattr("services.sink.sqlite_store.MIGRATIONS", (*MIGRATIONS, "CREATE TABLE broken (;"))
    with pytest.raises(sqlite3.OperationalError):
        SqliteStore(path)
    db = sqlite3.connect(path)
    # The good migrations ran, each in its own transaction; the broken one left nothing.
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM predictions").fetchone()[0] == 1


def test_cursors_round_trip_and_refuse_what_the_api_never_sent() -> None:
    cursor = Cursor(1_700_000_000_000, "18446744073709551615", "3_1")
    assert Cursor.decode(cursor.encode()) == cursor
    for forged in ("", "!!", "bm90IGpzb24", "WzEsMl0", "WyIxIiwiYSIsImIiXQ", "W3RydWUsImEiLCJiIl0"):
        with pytest.raises(ValueError, match="cursor"):
            Cursor.decode(forged)


def test_matches_needs_the_hashtag_and_the_score_on_the_same_suggestion() -> None:
    item = prediction(tags=(("dogs", 0.95), ("cats", 0.6)))
    assert matches(item, None, 0.0)
    assert matches(item, "cats", 0.5)
    assert not matches(item, "cats", 0.9)  # 0.95 is the dogs score
    assert matches(item, None, 0.9)
    assert not matches(item, "horse", 0.0)
    assert matches(prediction(tags=()), None, 0.0)
    assert not matches(prediction(tags=()), None, 0.1)


def test_a_commit_is_on_disk_before_the_sink_commits_its_offsets(tmp_path: Path) -> None:
    """The sink commits its offsets once the store has committed the row. In WAL mode,
    synchronous=NORMAL syncs the log only at checkpoints, so a power loss could take back rows
    whose offsets Kafka already holds; FULL syncs it at every commit."""
    store = SqliteStore(tmp_path / "p.db")
    writer = store._db
    assert writer.execute("PRAGMA journal_mode").fetchone()["journal_mode"] == "wal"
    assert writer.execute("PRAGMA synchronous").fetchone()["synchronous"] == 2  # FULL
