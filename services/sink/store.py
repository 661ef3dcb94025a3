"""The predictions store: SQLite in WAL mode, one row per image, upserted on (tweet id, media key)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.common.timeutil import now_ms

# Each entry moves the schema one version up; `PRAGMA user_version` says how far a file is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE predictions (
        tweet_id TEXT NOT NULL,
        media_key TEXT NOT NULL,
        image_url TEXT NOT NULL,
        post_url TEXT NOT NULL,
        text TEXT NOT NULL,
        author_username TEXT,
        priority INTEGER NOT NULL,
        hashtags TEXT NOT NULL,
        scores TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        ingest_ts_ms INTEGER NOT NULL,
        fetch_ts_ms INTEGER NOT NULL,
        classify_ts_ms INTEGER NOT NULL,
        stored_ts_ms INTEGER NOT NULL,
        PRIMARY KEY (tweet_id, media_key)
    );
    CREATE INDEX predictions_by_time ON predictions (classify_ts_ms DESC);
    CREATE TABLE prediction_hashtags (
        tweet_id TEXT NOT NULL,
        media_key TEXT NOT NULL,
        hashtag TEXT NOT NULL,
        score REAL NOT NULL,
        PRIMARY KEY (tweet_id, media_key, hashtag),
        FOREIGN KEY (tweet_id, media_key) REFERENCES predictions ON DELETE CASCADE
    );
    CREATE INDEX prediction_hashtags_by_tag ON prediction_hashtags (hashtag, score);
    """,
)

_COLUMNS = (
    "tweet_id", "media_key", "image_url", "post_url", "text", "author_username", "priority", "hashtags",
    "scores", "model_name", "model_version", "ingest_ts_ms", "fetch_ts_ms", "classify_ts_ms", "stored_ts_ms",
)  # fmt: skip


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        migrate(self._db)

    def close(self) -> None:
        self._db.close()

    def upsert(self, prediction: dict[str, Any]) -> None:
        row = {name: prediction.get(name) for name in _COLUMNS}
        row["hashtags"] = json.dumps(prediction["hashtags"])
        row["scores"] = json.dumps(prediction["scores"])
        row["stored_ts_ms"] = now_ms()
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
        with self._transaction():
            self._db.execute(
                f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)}) "  # noqa: S608 - fixed column names
                f"ON CONFLICT (tweet_id, media_key) DO UPDATE SET {updates}",
                row,
            )
            key = (prediction["tweet_id"], prediction["media_key"])
            self._db.execute("DELETE FROM prediction_hashtags WHERE tweet_id = ? AND media_key = ?", key)
            self._db.executemany(
                "INSERT INTO prediction_hashtags (tweet_id, media_key, hashtag, score) VALUES (?, ?, ?, ?)",
                [(*key, h["hashtag"], h["score"]) for h in prediction["hashtags"]],
            )

    def recent(self, *, limit: int = 50, hashtag: str | None = None, min_score: float = 0.0) -> list[dict[str, Any]]:
        if hashtag:
            rows = self._db.execute(
                "SELECT p.* FROM predictions p JOIN prediction_hashtags h USING (tweet_id, media_key) "
                "WHERE h.hashtag = ? AND h.score >= ? ORDER BY p.classify_ts_ms DESC LIMIT ?",
                (hashtag, min_score, limit),
            )
        else:
            rows = self._db.execute("SELECT * FROM predictions ORDER BY classify_ts_ms DESC LIMIT ?", (limit,))
        return [_to_dict(r) for r in rows]

    def get(self, tweet_id: str, media_key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM predictions WHERE tweet_id = ? AND media_key = ?", (tweet_id, media_key)
        ).fetchone()
        return _to_dict(row) if row else None

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM predictions").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this file has not seen; return the schema version."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    return len(MIGRATIONS)


def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    item["hashtags"] = json.loads(item["hashtags"])
    item["scores"] = json.loads(item["scores"])
    item["end_to_end_ms"] = item["classify_ts_ms"] - item["ingest_ts_ms"]
    return item
