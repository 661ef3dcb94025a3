"""Stores for the sink's tests: a SQLite file per test, and a schema per test on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.sink.postgres_store import PostgresStore
from services.sink.sqlite_store import SqliteStore
from services.sink.store import Store

from . import postgres

ROOT = postgres.ROOT


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres.cluster() as url:
        yield url


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    with postgres.fresh_schema(postgres_url) as url:
        yield url


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store implementation in turn, empty."""
    opened: Store
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "predictions.db")
    else:
        opened = await PostgresStore.open(request.getfixturevalue("postgres_schema_url"), pool_size=2)
    yield opened
    await opened.close()
