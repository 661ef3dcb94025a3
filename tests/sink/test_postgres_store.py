"""What only the PostgreSQL store does: migrations shared by replicas, a feed across replicas, outages."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from services.sink.postgres_store import MIGRATIONS, PostgresStore
from services.sink.store import Prediction, PredictionQuery, StoreUnavailable

from .postgres import fresh_database
from .records import prediction

pytestmark = pytest.mark.integration


async def test_replicas_starting_together_migrate_once(postgres_schema_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(postgres_schema_url, pool_size=1) for _ in range(3)))
    try:
        with psycopg.connect(postgres_schema_url) as conn:
            assert conn.execute("SELECT version FROM tagstream_schema").fetchall() == [(len(MIGRATIONS),)]
        await stores[0].upsert(prediction("1"))
        assert await stores[2].count() == 1
    finally:
        for store in stores:
            await store.close()


async def test_every_replica_sees_what_any_replica_stores(postgres_schema_url: str) -> None:
    writer = await PostgresStore.open(postgres_schema_url, pool_size=1)
    reader = await PostgresStore.open(postgres_schema_url, pool_size=1)
    seen: list[Prediction] = []
    arrived = asyncio.Event()

    def on_stored(item: Prediction) -> None:
        seen.append(item)
        arrived.set()

    listening = asyncio.Event()
    watcher = asyncio.create_task(reader.watch(on_stored, listening))
    try:
        await asyncio.wait_for(listening.wait(), timeout=10)
        stored = await writer.upsert(prediction("7", tags=(("horse", 0.9),)))
        await asyncio.wait_for(arrived.wait(), timeout=10)
        assert seen == [stored]
    finally:
        watcher.cancel()
        await writer.close()
        await reader.close()


async def test_a_lost_connection_is_reported_as_unavailable_then_recovers(postgres_schema_url: str) -> None:
    url = f"{postgres_schema_url}&application_name=sink-outage-test"
    store = await PostgresStore.open(url, pool_size=1)
    try:
        await store.upsert(prediction("1"))
        with psycopg.connect(postgres_schema_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sink-outage-test'"
            ).fetchall()
        assert killed == [(True,)]
        with pytest.raises(StoreUnavailable):
            await store.recent(PredictionQuery())
        # The pool replaces the broken connection: the next call works again.
        assert (await store.get("1", "3_1")) is not None
    finally:
        await store.close()


async def test_the_live_feed_reconnects_after_losing_its_connection(postgres_schema_url: str) -> None:
    writer = await PostgresStore.open(postgres_schema_url, pool_size=1)
    reader = await PostgresStore.open(f"{postgres_schema_url}&application_name=sink-feed-test", pool_size=1)
    seen: asyncio.Queue[Prediction] = asyncio.Queue()
    listening = asyncio.Event()
    watcher = asyncio.create_task(reader.watch(seen.put_nowait, listening))
    try:
        await asyncio.wait_for(listening.wait(), timeout=10)
        with psycopg.connect(postgres_schema_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                ("sink-feed-test",),
            )
        for _ in range(100):  # the feed notices the loss
            if not listening.is_set():
                break
            await asyncio.sleep(0.1)
        assert not listening.is_set()
        await asyncio.wait_for(listening.wait(), timeout=10)  # and listens again
        stored = await writer.upsert(prediction("8"))
        assert await asyncio.wait_for(seen.get(), timeout=10) == stored
    finally:
        watcher.cancel()
        await writer.close()
        await reader.close()


async def test_a_write_refused_by_a_read_only_server_is_retried_on_a_new_connection(postgres_url: str) -> None:
    """A failover: the sink's server turns read-only (a demoted primary, a standby), then a
    writable server answers the URL again."""
    with fresh_database(postgres_url) as url:
        name = url.rsplit("/", 1)[1]
        store = await PostgresStore.open(f"{url}?application_name=sink-failover-test", pool_size=1)
        try:
            await store.upsert(prediction("1"))
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
                # Sessions take the setting when they start: the failover drops the old ones.
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    ("sink-failover-test",),
                )
            causes = []
            for _ in range(20):
                with pytest.raises(StoreUnavailable) as refused:
                    await store.upsert(prediction("2"))
                causes.append(type(refused.value.__cause__))
                if causes[-1] is psycopg.errors.ReadOnlySqlTransaction:
                    break
            assert causes[-1] is psycopg.errors.ReadOnlySqlTransaction, causes
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
            # The read-only session was dropped: the next connection can write.
            await store.upsert(prediction("2"))
            assert await store.count() == 2
        finally:
            await store.close()


async def test_free_text_is_stored_as_it_came_unless_it_holds_a_nul(postgres_schema_url: str) -> None:
    store = await PostgresStore.open(postgres_schema_url, pool_size=1)
    try:
        await store.upsert(prediction("1", text="a \\0 b", author_username="x"))
        await store.upsert(prediction("2", text="a \\0 b\x00", author_username="x"))
    finally:
        await store.close()
    with psycopg.connect(postgres_schema_url) as conn:
        rows = conn.execute(
            "SELECT tweet_id, text, author_username, nul_escaped FROM predictions ORDER BY 1"
        ).fetchall()
    assert rows == [("1", "a \\0 b", "x", False), ("2", "a \\\\0 b\\0", "x", True)]


async def test_a_version_one_database_is_migrated_with_its_rows(postgres_schema_url: str) -> None:
    with psycopg.connect(postgres_schema_url, autocommit=True) as conn:
        conn.execute(MIGRATIONS[0])
        conn.execute("CREATE TABLE tagstream_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO tagstream_schema VALUES (1)")
        conn.execute(
            "INSERT INTO predictions VALUES"
            " ('7', '3_7', 'u', 'p', 'a \\0 b', NULL, 1, '[]', '{}', 0, 'm', '1', 1, 2, 3, 4)"
        )
    store = await PostgresStore.open(postgres_schema_url, pool_size=1)
    try:
        item = await store.get("7", "3_7")
        assert item is not None
        assert item["text"] == "a \\0 b"
        with psycopg.connect(postgres_schema_url) as conn:
            assert conn.execute("SELECT version FROM tagstream_schema").fetchall() == [(len(MIGRATIONS),)]
    finally:
        await store.close()


async def test_a_batch_refused_by_a_read_only_server_leaves_every_row_to_be_retried(postgres_url: str) -> None:
    """Grouped upserts meet the failover together: each is told the store is unavailable (so
    the stream loop retries it), none is dead-lettered, and all are stored once it is over."""
    with fresh_database(postgres_url) as url:
        name = url.rsplit("/", 1)[1]
        store = await PostgresStore.open(f"{url}?application_name=sink-batch-failover-test", pool_size=1)
        try:
            await store.upsert(prediction("0"))
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    ("sink-batch-failover-test",),
                )
            records = [prediction(str(n)) for n in range(1, 9)]
            causes: set[type[BaseException] | type[None]] = set()
            for _ in range(20):
                outcomes = await asyncio.gather(*(store.upsert(r) for r in records), return_exceptions=True)
                assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
                causes = {type(o.__cause__) for o in outcomes if isinstance(o, BaseException)}
                if psycopg.errors.ReadOnlySqlTransaction in causes:
                    break
            assert causes == {psycopg.errors.ReadOnlySqlTransaction}
            assert await store.count() == 1
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
            # Retried as the stream loop retries: a session the pool opened before the reset is
            # read-only still, and is dropped when it refuses.
            for _ in range(20):
                outcomes = await asyncio.gather(*(store.upsert(r) for r in records), return_exceptions=True)
                if not any(isinstance(o, BaseException) for o in outcomes):
                    break
                assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
            assert await store.count() == 9
        finally:
            await store.close()
