"""Which store the settings name: PostgreSQL when `SINK_DATABASE_URL` is set, else the SQLite file."""

from __future__ import annotations

from .postgres_store import PostgresStore
from .settings import SinkSettings
from .sqlite_store import SqliteStore
from .store import Store


async def open_store(settings: SinkSettings) -> Store:
    if settings.database_url is not None:
        return await PostgresStore.open(settings.database_url.get_secret_value(), settings.database_pool_size)
    return SqliteStore(settings.database_path)
