"""What a power-safe SQLite store costs the sink: upserts per second with synchronous=FULL
(every commit synced, what the sink runs) against NORMAL (synced at checkpoints only), side by
side in one run.

Each round writes the same predictions through `SqliteStore.upsert`, one transaction per
record as the sink does, into a fresh file on the project's disk (`.run/`, not a tmpfs); the
rounds alternate between the two settings so both see the same machine, and the median of
each is kept.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from services.sink.sqlite_store import SqliteStore

from .figures import Figure
from .stack import ROOT

RECORDS = 2_000
ROUNDS = 3  # odd: the median is a measured round

Synchronous = Literal["FULL", "NORMAL"]


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


async def upserts_per_s(directory: Path, synchronous: Synchronous) -> float:
    store = SqliteStore(directory / f"{synchronous.lower()}-{time.monotonic_ns()}.db", synchronous=synchronous)
    records = [prediction(n) for n in range(RECORDS)]
    try:
        started = time.perf_counter()
        for record in records:
            await store.upsert(record)
        return RECORDS / (time.perf_counter() - started)
    finally:
        await store.close()


async def measure(directory: Path) -> dict[Synchronous, list[float]]:
    rates: dict[Synchronous, list[float]] = {"FULL": [], "NORMAL": []}
    for _ in range(ROUNDS):
        for synchronous in ("FULL", "NORMAL"):
            rates[synchronous].append(await upserts_per_s(directory, synchronous))
    return rates


def run() -> list[Figure]:
    (ROOT / ".run").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-sink-", dir=ROOT / ".run") as tmp:
        rates = asyncio.run(measure(Path(tmp)))
    full, normal = statistics.median(rates["FULL"]), statistics.median(rates["NORMAL"])
    context = {
        "records_per_round": RECORDS,
        "rounds": ROUNDS,
        "full_upserts_per_s": [round(r) for r in rates["FULL"]],
        "normal_upserts_per_s": [round(r) for r in rates["NORMAL"]],
    }
    return [
        Figure("sink_sqlite_full_upserts_per_s", round(full), "records/s", context=context),
        Figure("sink_sqlite_normal_upserts_per_s", round(normal), "records/s", context=context),
        Figure(
            "sink_sqlite_full_vs_normal",
            round(full / normal, 3),
            "ratio",
            goal="what FULL costs; the sink runs FULL (a power loss must not take back a committed row)",
            context=context,
        ),
    ]
