"""Which store the settings name: PostgreSQL when `SINK_DATABASE_URL` is set, else the SQLite file."""

from __future__ import annotations

from .credentials import split_password
from .postgres_store import PostgresStore
from .settings import SinkSettings
from .sqlite_store import SqliteStore
from .store import Store


async def open_store(settings: SinkSettings) -> Store:
    if settings.database_url is not None:
        url, password = split_password(settings.database_url.get_secret_value())
        return await PostgresStore.open(
            url, settings.database_pool_size, password=password, grouping=settings.grouping()
        )
    return SqliteStore(settings.database_path, grouping=settings.grouping())
