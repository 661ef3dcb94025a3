"""The SQLite store: one file in WAL mode, written by one sink process.

Every commit is synced to disk (synchronous=FULL): the sink commits its Kafka offsets
once the row is committed, so a commit that a power loss could take back (NORMAL syncs
the WAL only at checkpoints) would lose a record for good. One sync per row would cap the
sink at a few hundred rows a second, so concurrent upserts are committed together
(group_commit.py): one transaction, one sync, each row in a savepoint of its own so a row
SQLite refuses fails alone. Writes run in one writer thread, so the event loop takes the
next rows while a batch syncs. bench/bench_sink.py measures both.

Reads run in a worker thread on a read-only connection, since a count over a long window
or an export can take a while. Live updates (`watch`) see this process's writes, which are
all the writes to its file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from services.common.timeutil import now_ms

from . import sql
from .group_commit import DEFAULT_POLICY, GroupCommit, GroupPolicy
from .store import (
    COLUMNS,
    DatasetRow,
    HashtagCount,
    OnStored,
    Page,
    Prediction,
    PredictionQuery,
    StoreUnavailable,
    page_of,
    to_prediction,
    to_row,
)

# Each entry moves the schema one version up; `PRAGMA user_version` says how far a file is.
# Never edit an entry that has shipped: add one.
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
    # 2: keyset paging, time ranges and score filters as index range scans.
    """
    ALTER TABLE predictions ADD COLUMN top_score REAL NOT NULL DEFAULT 0;
    UPDATE predictions SET top_score = coalesce(
        (SELECT max(score) FROM prediction_hashtags h
         WHERE h.tweet_id = predictions.tweet_id AND h.media_key = predictions.media_key), 0);
    DROP INDEX predictions_by_time;
    CREATE INDEX predictions_by_time ON predictions (classify_ts_ms, tweet_id, media_key);
    ALTER TABLE prediction_hashtags ADD COLUMN classify_ts_ms INTEGER NOT NULL DEFAULT 0;
    UPDATE prediction_hashtags SET classify_ts_ms = (
        SELECT p.classify_ts_ms FROM predictions p
        WHERE p.tweet_id = prediction_hashtags.tweet_id AND p.media_key = prediction_hashtags.media_key);
    DROP INDEX prediction_hashtags_by_tag;
    CREATE INDEX prediction_hashtags_by_tag_time
        ON prediction_hashtags (hashtag, classify_ts_ms, tweet_id, media_key);
    CREATE INDEX prediction_hashtags_by_time ON prediction_hashtags (classify_ts_ms);
    """,
    # 3: whether the model's weights are meaningful, as it declared (NULL: it did not say).
    """
    ALTER TABLE predictions ADD COLUMN model_weights_meaningful INTEGER;
    """,
)

_UPSERT = (
    f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)}) "  # noqa: S608 - fixed column names
    f"ON CONFLICT (tweet_id, media_key) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[2:])}"
)


class SqliteStore:
    backend = "sqlite"

    def __init__(
        self, path: Path, synchronous: Literal["FULL", "NORMAL"] = "FULL", grouping: GroupPolicy = DEFAULT_POLICY
    ) -> None:
        """`synchronous="NORMAL"` only to measure what FULL costs: it can lose committed rows."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        # Used by the writer thread only, once migrated.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = _dict_row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        migrate(self._db)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._group: GroupCommit[dict[str, Any], None] = GroupCommit(self._commit, self.backend, grouping)
        # Reads run in a worker thread on a connection of their own (WAL lets it read while
        # the writer writes): a count over a long window must not stall consumption.
        self._reader = _read_only(path)
        self._read_lock = asyncio.Lock()
        self._watchers: set[OnStored] = set()

    async def close(self) -> None:
        await self._group.close()
        self._writer.shutdown()
        async with self._read_lock:
            self._reader.close()
        self._db.close()

    async def upsert(self, prediction: Mapping[str, Any]) -> Prediction:
        row = to_row(prediction, now_ms())
        await self._group.submit(row)
        stored = to_prediction(row)
        for on_stored in list(self._watchers):
            on_stored(stored)
        return stored

    async def _commit(self, rows: Sequence[dict[str, Any]]) -> list[BaseException | None]:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, self._write, rows)
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error: worth retrying
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _write(self, rows: Sequence[dict[str, Any]]) -> list[BaseException | None]:
        """One transaction for `rows`, each in a savepoint: a row SQLite refuses is rolled back
        alone and reported as its outcome. An OperationalError (the database, not the row)
        rolls back everything and is raised."""
        outcomes: list[BaseException | None] = []
        self._db.execute("BEGIN")
        try:
            for row in rows:
                self._db.execute("SAVEPOINT row")
                try:
                    self._write_row(row)
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this row's own error, handed to its caller
                    self._db.execute("ROLLBACK TO row")
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
                self._db.execute("RELEASE row")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return outcomes

    def _write_row(self, row: dict[str, Any]) -> None:
        key = (row["tweet_id"], row["media_key"])
        self._db.execute(_UPSERT, row)
        self._db.execute("DELETE FROM prediction_hashtags WHERE tweet_id = ? AND media_key = ?", key)
        self._db.executemany(
            "INSERT INTO prediction_hashtags (tweet_id, media_key, hashtag, score, classify_ts_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            [(*key, h["hashtag"], h["score"], row["classify_ts_ms"]) for h in json.loads(row["hashtags"])],
        )

    async def get(self, tweet_id: str, media_key: str) -> Prediction | None:
        rows = await self._read("SELECT * FROM predictions WHERE tweet_id = ? AND media_key = ?", (tweet_id, media_key))
        return to_prediction(rows[0]) if rows else None

    async def recent(self, query: PredictionQuery) -> Page:
        text, params = sql.recent(query, sql.sqlite_param)
        return page_of([to_prediction(r) for r in await self._read(text, params)], query.limit)

    async def hashtag_counts(
        self, *, since_ms: int, until_ms: int | None, min_score: float = 0.0, limit: int = 100
    ) -> list[HashtagCount]:
        text, params = sql.hashtag_counts(since_ms, until_ms, min_score, limit, sql.sqlite_param)
        return [HashtagCount(r["hashtag"], r["n"]) for r in await self._read(text, params)]

    async def confident(self, threshold: float, chunk: int = 1000) -> AsyncIterator[DatasetRow]:
        text, params = sql.confident(threshold, sql.sqlite_param)
        # A connection of its own: an export may take long and must not hold up the API's reads.
        reader = await asyncio.to_thread(_read_only, self._path)
        try:
            cursor = await asyncio.to_thread(reader.execute, text, params)
            while rows := await asyncio.to_thread(cursor.fetchmany, chunk):
                for r in rows:
                    yield DatasetRow(r["tweet_id"], r["media_key"], r["image_url"], r["hashtag"], r["score"])
        finally:
            await asyncio.to_thread(reader.close)

    async def count(self) -> int:
        return int((await self._read("SELECT count(*) AS n FROM predictions", ()))[0]["n"])

    async def _read(self, text: str, params: Mapping[str, Any] | tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._read_lock:
            return await asyncio.to_thread(lambda: self._reader.execute(text, params).fetchall())

    async def watch(self, on_stored: OnStored, listening: asyncio.Event | None = None) -> None:
        self._watchers.add(on_stored)
        if listening is not None:
            listening.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._watchers.discard(on_stored)


def _read_only(path: Path) -> sqlite3.Connection:
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.row_factory = _dict_row
    reader.execute("PRAGMA query_only=ON")
    return reader


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this file has not seen, each in its own transaction; return the schema version."""
    cursor = db.cursor()
    cursor.row_factory = None
    version = int(cursor.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this code's {len(MIGRATIONS)}")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
