"""What only the PostgreSQL store does: migrations shared by replicas, a feed across replicas, outages."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from services.sink.postgres_store import MIGRATIONS, PostgresStore
from services.sink.store import Prediction, PredictionQuery, StoreUnavailable

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
