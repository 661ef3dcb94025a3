"""What durable commits cost the sink, and what group commit wins back, side by side in one run.

SQLite, upserts per second through `SqliteStore.upsert`:
- FULL per row: every commit synced, one row per transaction (`max_batch=1`), as the sink
  committed before group commit;
- FULL grouped: every commit synced, concurrent upserts committed together (what the sink runs);
- NORMAL per row: synced at checkpoints only, one row per transaction: the figure FULL used to
  be compared with (a power loss can take back its commits, so the sink never runs it);
- NORMAL grouped, for completeness.
PostgreSQL, on a cluster of the bench's own started with fsync and synchronous commit on
(`PG_DURABLE=1 scripts/postgres.sh`; the tests' cluster runs with fsync off):
- per row: one autocommitted statement per row over the pool's 4 connections (`max_batch=1`,
  `concurrency=4`), as the sink wrote before group commit;
- grouped: what the sink runs.

Every round submits the same 2,000 predictions from 64 concurrent callers, as the sink's
in-flight window does, into a fresh file on the project's disk (`.run/`, not a tmpfs) or a
fresh schema; rounds alternate between the settings so all see the same machine, and the
median of each is kept. The load average is recorded with the figures: the machine is shared.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg

from services.sink.group_commit import GroupPolicy
from services.sink.postgres_store import PostgresStore
from services.sink.sqlite_store import SqliteStore
from services.sink.store import Store
from tests.sink.postgres import fresh_schema

from .figures import Figure
from .stack import ROOT

RECORDS = 2_000
ROUNDS = 3  # odd: the median is a measured round
CALLERS = 64  # the sink's default in-flight window (SINK_MAX_IN_FLIGHT)
POOL_SIZE = 4  # SINK_DATABASE_POOL_SIZE's default

Synchronous = Literal["FULL", "NORMAL"]
PER_ROW = GroupPolicy(max_batch=1)
GROUPED = GroupPolicy()
SQLITE_SETTINGS: dict[str, tuple[Synchronous, GroupPolicy]] = {
    "full_per_row": ("FULL", PER_ROW),
    "full_grouped": ("FULL", GROUPED),
    "normal_per_row": ("NORMAL", PER_ROW),
    "normal_grouped": ("NORMAL", GROUPED),
}
POSTGRES_SETTINGS = {
    "per_row": GroupPolicy(max_batch=1, concurrency=POOL_SIZE),
    "grouped": GROUPED,
}


def prediction(n: int) -> dict[str, Any]:
    """A record as the sink hands it to the store: two suggested hashtags, 27 label scores."""
    scores = {f"label{i}": 0.01 for i in range(25)} | {"cats": 0.9, "dogs": 0.5}
    return {
        "tweet_id": str(1_800_000_000_000_000_000 + n), "media_key": f"3_{n}",
        "image_url": f"https://pbs.twimg.com/media/{n}.jpg", "post_url": f"https://x.com/i/web/status/{n}",
        "text": "a post of ordinary length with a #hashtag or two " * 3, "author_username": "someone",
        "priority": 1, "hashtags": [{"hashtag": "cats", "score": 0.9}, {"hashtag": "dogs", "score": 0.5}],
        "scores": scores, "model_name": "resnet50", "model_version": "1",
        "ingest_ts_ms": 1_000_000 + n, "fetch_ts_ms": 1_000_100 + n, "classify_ts_ms": 1_000_200 + n,
    }  # fmt: skip


async def upserts_per_s(store: Store) -> float:
    """Upserts per second of `RECORDS` predictions from `CALLERS` concurrent callers."""
    records = [prediction(n) for n in range(RECORDS)]
    callers = asyncio.Semaphore(CALLERS)

    async def upsert(record: dict[str, Any]) -> None:
        async with callers:
            await store.upsert(record)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(upsert(r) for r in records))
        elapsed = time.perf_counter() - started
        if await store.count() != RECORDS:
            raise RuntimeError(f"{store.backend}: {await store.count()} rows stored of {RECORDS}")
        return RECORDS / elapsed
    finally:
        await store.close()


async def measure_sqlite(directory: Path) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in SQLITE_SETTINGS}
    for _ in range(ROUNDS):
        for name, (synchronous, grouping) in SQLITE_SETTINGS.items():
            path = directory / f"{name}-{time.monotonic_ns()}.db"
            rates[name].append(await upserts_per_s(SqliteStore(path, synchronous, grouping)))
    return rates


async def measure_postgres(url: str) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in POSTGRES_SETTINGS}
    for _ in range(ROUNDS):
        for name, grouping in POSTGRES_SETTINGS.items():
            with fresh_schema(url, prefix="bench") as schema_url:
                store = await PostgresStore.open(schema_url, POOL_SIZE, grouping=grouping)
                rates[name].append(await upserts_per_s(store))
    return rates


@contextmanager
def durable_postgres(directory: Path) -> Iterator[str]:
    """A PostgreSQL cluster of this run's own with fsync and synchronous commit on; its URL."""
    env = {**os.environ, "PG_DIR": str(directory / "postgres"), "PG_DURABLE": "1"}
    script = [str(ROOT / "scripts" / "postgres.sh")]
    started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"scripts/postgres.sh start failed:\n{started.stderr}")
    try:
        url = started.stdout.strip().splitlines()[-1]
        with psycopg.connect(url) as conn:
            settings = conn.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')").fetchone()
        if settings != ("on", "on"):
            raise RuntimeError(f"the bench's PostgreSQL is not durable: fsync, synchronous_commit = {settings}")
        yield url
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, check=False)


def run() -> list[Figure]:
    (ROOT / ".run").mkdir(exist_ok=True)
    load_before = os.getloadavg()[0]
    directory = Path(tempfile.mkdtemp(prefix="bench-sink-", dir=ROOT / ".run"))
    directory.chmod(0o755)  # the PostgreSQL server runs as its own user, which must reach its PG_DIR
    try:
        sqlite = asyncio.run(measure_sqlite(directory))
        with durable_postgres(directory) as url:
            postgres = asyncio.run(measure_postgres(url))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    load = {"load_average_1m_before": round(load_before, 1), "load_average_1m_after": round(os.getloadavg()[0], 1)}
    shape: dict[str, Any] = {"records_per_round": RECORDS, "rounds": ROUNDS, "concurrent_callers": CALLERS}
    shape["grouping"] = {"max_batch": GROUPED.max_batch, "max_wait_ms": GROUPED.max_wait_s * 1000}
    lite = {f"{name}_upserts_per_s": [round(r) for r in rates] for name, rates in sqlite.items()}
    pg = {f"{name}_upserts_per_s": [round(r) for r in rates] for name, rates in postgres.items()}
    sqlite_context = shape | load | lite
    postgres_context = shape | load | pg | {"pool_size": POOL_SIZE, "server": "fsync=on, synchronous_commit=on"}
    s = {name: statistics.median(rates) for name, rates in sqlite.items()}
    p = {name: statistics.median(rates) for name, rates in postgres.items()}
    durable = "; the sink runs FULL (a power loss must not take back a committed row)"
    return [
        *(
            Figure(f"sink_sqlite_{name}_upserts_per_s", round(rate), "records/s", context=sqlite_context)
            for name, rate in s.items()
        ),
        Figure(
            "sink_sqlite_full_grouped_vs_normal_per_row",
            round(s["full_grouped"] / s["normal_per_row"], 3),
            "ratio",
            goal=f">= 1: group commit wins back what FULL cost against NORMAL's per-row commits{durable}",
            context=sqlite_context,
        ),
        Figure(
            "sink_sqlite_full_grouped_vs_per_row",
            round(s["full_grouped"] / s["full_per_row"], 3),
            "ratio",
            goal="what group commit wins with every commit synced",
            context=sqlite_context,
        ),
        Figure(
            "sink_sqlite_full_per_row_vs_normal_per_row",
            round(s["full_per_row"] / s["normal_per_row"], 3),
            "ratio",
            goal=f"what FULL costs without group commit{durable}",
            context=sqlite_context,
        ),
        *(
            Figure(f"sink_postgres_{name}_upserts_per_s", round(rate), "records/s", context=postgres_context)
            for name, rate in p.items()
        ),
        Figure(
            "sink_postgres_grouped_vs_per_row",
            round(p["grouped"] / p["per_row"], 3),
            "ratio",
            goal="what group commit wins on a durable PostgreSQL",
            context=postgres_context,
        ),
    ]
