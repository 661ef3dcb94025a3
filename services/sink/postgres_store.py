r"""The PostgreSQL store (psycopg 3, asyncio), shared by any number of sink replicas.

Every write notifies the channel `tagstream_predictions` in its transaction, so each
replica's live feed (`watch`) carries the predictions stored by all replicas, not only
those of the partitions it consumes.

PostgreSQL text cannot hold NUL, which post text may. A row whose free text (`FREE_TEXT`)
has one is stored with every `\` of those columns written `\\` and every NUL written
`\0`, and `nul_escaped` set; reads undo it. Every other row is stored as it came.

A write refused because the server is read-only (a standby, or a primary demoted during
a failover) is retried on a new connection, which may reach the new primary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import RecordError
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

log = logging.getLogger(__name__)

CHANNEL = "tagstream_predictions"
# pg_advisory_xact_lock key: replicas starting together migrate one at a time.
_MIGRATION_LOCK = 0x7461_6773_7472_6D  # "tagstrm"

# Each entry moves the schema one version up; `tagstream_schema.version` says how far a
# database is. Never edit an entry that has shipped: add one. Identifiers compare in
# byte order (COLLATE "C") as in SQLite, so pages are cut at the same places.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE predictions (
        tweet_id TEXT COLLATE "C" NOT NULL,
        media_key TEXT COLLATE "C" NOT NULL,
        image_url TEXT NOT NULL,
        post_url TEXT NOT NULL,
        text TEXT NOT NULL,
        author_username TEXT,
        priority INTEGER NOT NULL,
        hashtags JSONB NOT NULL,
        scores JSONB NOT NULL,
        top_score DOUBLE PRECISION NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        ingest_ts_ms BIGINT NOT NULL,
        fetch_ts_ms BIGINT NOT NULL,
        classify_ts_ms BIGINT NOT NULL,
        stored_ts_ms BIGINT NOT NULL,
        PRIMARY KEY (tweet_id, media_key)
    );
    CREATE INDEX predictions_by_time ON predictions (classify_ts_ms, tweet_id, media_key);
    CREATE TABLE prediction_hashtags (
        tweet_id TEXT COLLATE "C" NOT NULL,
        media_key TEXT COLLATE "C" NOT NULL,
        hashtag TEXT COLLATE "C" NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        classify_ts_ms BIGINT NOT NULL,
        PRIMARY KEY (tweet_id, media_key, hashtag),
        FOREIGN KEY (tweet_id, media_key) REFERENCES predictions ON DELETE CASCADE
    );
    CREATE INDEX prediction_hashtags_by_tag_time
        ON prediction_hashtags (hashtag, classify_ts_ms, tweet_id, media_key);
    CREATE INDEX prediction_hashtags_by_time ON prediction_hashtags (classify_ts_ms);
    """,
    # 2: NUL in free text, escaped (the module's docstring).
    """
    ALTER TABLE predictions ADD COLUMN nul_escaped BOOLEAN NOT NULL DEFAULT false;
    """,
    # 3: whether the model's weights are meaningful, as it declared (NULL: it did not say).
    """
    ALTER TABLE predictions ADD COLUMN model_weights_meaningful BOOLEAN;
    """,
)

#: the text columns a record may fill with anything its author wrote (ids and hashtags never hold NUL: store.to_row)
FREE_TEXT = ("image_url", "post_url", "text", "author_username", "model_name", "model_version")
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_ROW_COLUMNS = (*COLUMNS, "nul_escaped")
_JSON_COLUMNS = frozenset({"hashtags", "scores"})
# One statement, so one round trip and atomic without a transaction block: the row, its
# hashtags (kept, updated, added or removed to match the record) and the notification.
# The hashtag rows touched by the DELETE and by the INSERT never overlap, as one
# statement requires.
_VALUES = ", ".join(f"%({c})s::jsonb" if c in _JSON_COLUMNS else f"%({c})s" for c in _ROW_COLUMNS)
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS[2:])
_UPSERT = f"""
WITH stored AS (
    INSERT INTO predictions ({", ".join(_ROW_COLUMNS)}) VALUES ({_VALUES})
    ON CONFLICT (tweet_id, media_key) DO UPDATE SET {_UPDATES}
    RETURNING *
), tags AS (
    SELECT h.hashtag, h.score
    FROM jsonb_to_recordset(%(hashtags)s::jsonb) AS h(hashtag TEXT, score DOUBLE PRECISION)
), dropped AS (
    DELETE FROM prediction_hashtags t
    WHERE t.tweet_id = %(tweet_id)s AND t.media_key = %(media_key)s AND t.hashtag NOT IN (SELECT hashtag FROM tags)
), written AS (
    INSERT INTO prediction_hashtags (tweet_id, media_key, hashtag, score, classify_ts_ms)
    SELECT %(tweet_id)s, %(media_key)s, hashtag, score, %(classify_ts_ms)s FROM tags
    ON CONFLICT (tweet_id, media_key, hashtag) DO UPDATE
    SET score = excluded.score, classify_ts_ms = excluded.classify_ts_ms
), notified AS (
    SELECT pg_notify('{CHANNEL}', %(notify)s)
)
SELECT stored.* FROM stored, notified
"""  # noqa: S608 - fixed column names; values are parameters


class PostgresStore:
    backend = "postgresql"

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]],
        password: str | None = None,
        grouping: GroupPolicy = DEFAULT_POLICY,
    ) -> None:
        self._url = url
        self._password = password
        self._pool = pool
        self._group: GroupCommit[dict[str, Any], Prediction] = GroupCommit(self._commit, self.backend, grouping)

    @classmethod
    async def open(
        cls,
        url: str,
        pool_size: int = 4,
        timeout_s: float = 30.0,
        password: str | None = None,
        grouping: GroupPolicy = DEFAULT_POLICY,
    ) -> PostgresStore:
        """Connect, migrate, and return the store.

        `password` apart from `url` keeps it out of libpq's messages (services/sink/credentials.py).
        """
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max(pool_size, 1),
            kwargs={"autocommit": True, "row_factory": dict_row, "password": password},  # None: the URL's, if any
            connection_class=psycopg.AsyncConnection[dict[str, Any]],
            open=False,
            name="sink",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
            async with pool.connection() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(url, pool, password, grouping)

    async def close(self) -> None:
        await self._group.close()
        await self._pool.close()

    async def upsert(self, prediction: Mapping[str, Any]) -> Prediction:
        row = escape_nul(to_row(prediction, now_ms()))
        row["notify"] = json.dumps([row["tweet_id"], row["media_key"]])
        return await self._group.submit(row)

    async def _commit(self, rows: Sequence[dict[str, Any]]) -> list[Prediction | BaseException]:
        """`rows` in one transaction, sent together (psycopg pipelines `executemany`). A row
        PostgreSQL refuses fails the transaction: the group commit then writes them one by one."""
        try:
            async with self._pool.connection() as conn:
                try:
                    stored = await _upsert_all(conn, rows)
                except psycopg.errors.ReadOnlySqlTransaction:
                    # The session is on a server that cannot write and will stay so: the pool
                    # discards a closed connection and opens another.
                    await conn.close()
                    raise
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
            raise StoreUnavailable(f"postgresql: {exc}") from exc
        except psycopg.DataError as exc:  # a value PostgreSQL refuses, whatever the server's state
            raise RecordError("bad_record", f"postgresql: {exc}") from exc
        return [from_row(row) if row is not None else RuntimeError("the upsert returned no row") for row in stored]

    async def get(self, tweet_id: str, media_key: str) -> Prediction | None:
        row = await self._fetchone(
            "SELECT * FROM predictions WHERE tweet_id = %s AND media_key = %s", (tweet_id, media_key)
        )
        return from_row(row) if row else None

    async def recent(self, query: PredictionQuery) -> Page:
        text, params = sql.recent(query, sql.psycopg_param)
        rows = await self._fetchall(text, params)
        return page_of([from_row(r) for r in rows], query.limit)

    async def hashtag_counts(
        self, *, since_ms: int, until_ms: int | None, min_score: float = 0.0, limit: int = 100
    ) -> list[HashtagCount]:
        text, params = sql.hashtag_counts(since_ms, until_ms, min_score, limit, sql.psycopg_param)
        return [HashtagCount(r["hashtag"], r["n"]) for r in await self._fetchall(text, params)]

    async def confident(self, threshold: float) -> AsyncIterator[DatasetRow]:
        text, params = sql.confident(threshold, sql.psycopg_param, extra_columns=("nul_escaped",))
        async with self._pool.connection() as conn:
            async for r in conn.cursor().stream(text, params):
                image_url = unescape_text(r["image_url"]) if r["nul_escaped"] else r["image_url"]
                yield DatasetRow(r["tweet_id"], r["media_key"], image_url, r["hashtag"], r["score"])

    async def count(self) -> int:
        row = await self._fetchone("SELECT count(*) AS n FROM predictions", ())
        assert row is not None
        return int(row["n"])

    async def watch(
        self, on_stored: OnStored, listening: asyncio.Event | None = None, retry_max_s: float = 30.0
    ) -> None:
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, row_factory=dict_row, password=self._password
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    if listening is not None:
                        listening.set()
                    while True:
                        # Wait for one notification (and take any that came with it), then read the
                        # rows on the same connection; what arrives meanwhile waits in psycopg's backlog.
                        keys = [tuple(json.loads(n.payload)) async for n in conn.notifies(stop_after=1)]
                        for item in await _stored(conn, keys):
                            on_stored(item)
            except psycopg.OperationalError as exc:
                if listening is not None:
                    listening.clear()
                # Notifications sent while we reconnect are missed; the page re-reads on reconnect.
                log.warning("lost the live feed, reconnecting", extra={"fields": {"error": str(exc), "in_s": delay}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, retry_max_s)

    async def _fetchone(self, text: str, params: Any) -> dict[str, Any] | None:
        try:
            async with self._pool.connection() as conn:
                return await (await conn.execute(text, params)).fetchone()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"postgresql: {exc}") from exc

    async def _fetchall(self, text: str, params: Any) -> list[dict[str, Any]]:
        try:
            async with self._pool.connection() as conn:
                return await (await conn.execute(text, params)).fetchall()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"postgresql: {exc}") from exc


async def _upsert_all(conn: psycopg.AsyncConnection[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[Any]:
    if len(rows) == 1:  # one statement is atomic alone: no transaction block, one round trip
        return [await (await conn.execute(_UPSERT, rows[0])).fetchone()]
    stored = []
    async with conn.transaction(), conn.cursor() as cursor:
        await cursor.executemany(_UPSERT, rows, returning=True)
        while True:
            stored.append(await cursor.fetchone())
            if not cursor.nextset():
                break
    return stored


async def _stored(conn: psycopg.AsyncConnection[dict[str, Any]], keys: list[tuple[Any, ...]]) -> list[Prediction]:
    """The predictions under `keys`, in that order, each once."""
    unique = list(dict.fromkeys(keys))
    rows = await (
        await conn.execute(
            "SELECT p.* FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS k(tweet_id, media_key, n)"
            " JOIN predictions p USING (tweet_id, media_key) ORDER BY k.n",
            ([k[0] for k in unique], [k[1] for k in unique]),
        )
    ).fetchall()
    return [from_row(row) for row in rows]


def escape_nul(row: dict[str, Any]) -> dict[str, Any]:
    """The row as PostgreSQL can hold it, `nul_escaped` saying whether its free text was escaped."""
    escaped = any(isinstance(row[c], str) and "\x00" in row[c] for c in FREE_TEXT)
    if not escaped:
        return {**row, "nul_escaped": False}
    texts = {c: row[c].replace("\\", "\\\\").replace("\x00", "\\0") for c in FREE_TEXT if isinstance(row[c], str)}
    return {**row, **texts, "nul_escaped": True}


def unescape_text(text: str) -> str:
    return _ESCAPED.sub(lambda m: "\x00" if m[1] == "0" else m[1], text)


def from_row(row: Mapping[str, Any]) -> Prediction:
    """The API's view of a stored row, its free text as the record had it."""
    fields = {k: v for k, v in row.items() if k != "nul_escaped"}
    if row.get("nul_escaped"):
        fields |= {c: unescape_text(fields[c]) for c in FREE_TEXT if isinstance(fields[c], str)}
    return to_prediction(fields)


async def migrate(conn: psycopg.AsyncConnection[dict[str, Any]]) -> int:
    """Apply the migrations this database has not seen, in one transaction; return the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS tagstream_schema (version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT coalesce(max(version), 0) AS version FROM tagstream_schema")).fetchone()
        version = int(row["version"]) if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(f"database schema version {version} is newer than this code's {len(MIGRATIONS)}")
        for script in MIGRATIONS[version:]:
            await conn.execute(script)
        if version < len(MIGRATIONS):
            await conn.execute("DELETE FROM tagstream_schema")
            await conn.execute("INSERT INTO tagstream_schema (version) VALUES (%s)", (len(MIGRATIONS),))
    return len(MIGRATIONS)
