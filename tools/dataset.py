"""`make dataset`: the confident predictions per hashtag, as an image-folder style list.

One CSV row per (image, hashtag) scoring at least the threshold: `path,url,hashtag,score`,
where `path` is `<hashtag>/<tweet id>_<media key><ext>`, the place of the image in an
image-folder dataset (one directory per class). Downloading the URLs into those paths
gives the input of a teacher-student fine-tuning round. Rows are by hashtag, best first.

Reads the store the sink writes: `SINK_DATABASE_URL` (PostgreSQL) or `SINK_DATABASE_PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Collection
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from services.sink.backend import open_store
from services.sink.settings import SinkSettings
from services.sink.store import DatasetRow

HEADER = ("path", "url", "hashtag", "score")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def image_path(row: DatasetRow) -> str:
    """Where the image goes in an image-folder layout; safe as a relative path whatever the input."""
    suffix = PurePosixPath(urlsplit(row.image_url).path).suffix.lower()
    suffix = suffix if suffix in IMAGE_SUFFIXES else ".jpg"
    folder = _UNSAFE.sub("_", row.hashtag).strip("_") or "_"
    name = _UNSAFE.sub("_", f"{row.tweet_id}_{row.media_key}")
    return f"{folder}/{name}{suffix}"


async def select(
    rows: AsyncIterator[DatasetRow], hashtags: Collection[str], max_per_hashtag: int | None
) -> AsyncIterator[DatasetRow]:
    """Rows of the wanted hashtags (all when empty), at most `max_per_hashtag` of each (best first)."""
    taken: Counter[str] = Counter()
    async for row in rows:
        if hashtags and row.hashtag not in hashtags:
            continue
        if max_per_hashtag is not None and taken[row.hashtag] >= max_per_hashtag:
            continue
        taken[row.hashtag] += 1
        yield row


async def export(
    settings: SinkSettings, out: Path, threshold: float, hashtags: Collection[str], max_per_hashtag: int | None
) -> Counter[str]:
    store = await open_store(settings)
    per_hashtag: Counter[str] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(HEADER)
            async for row in select(store.confident(threshold), hashtags, max_per_hashtag):
                writer.writerow((image_path(row), row.image_url, row.hashtag, f"{row.score:.4f}"))
                per_hashtag[row.hashtag] += 1
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
        await store.close()
    return per_hashtag


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.dataset", description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.8, help="minimum score (default 0.8)")
    parser.add_argument("--out", type=Path, default=Path(".run/dataset/dataset.csv"))
    parser.add_argument("--hashtag", action="append", default=[], help="only this hashtag (repeatable)")
    parser.add_argument("--max-per-hashtag", type=int, default=None, help="keep the N best of each hashtag")
    parser.add_argument("--database-path", type=Path, default=None, help="SQLite file (default: SINK_DATABASE_PATH)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be between 0 and 1")
    if args.max_per_hashtag is not None and args.max_per_hashtag < 1:
        parser.error("--max-per-hashtag must be at least 1")
    settings = SinkSettings()
    if args.database_path is not None:
        settings = settings.model_copy(update={"database_path": args.database_path, "database_url": None})
    if settings.database_url is None and not settings.database_path.is_file():
        parser.error(f"no predictions store at {settings.database_path} (set SINK_DATABASE_PATH or SINK_DATABASE_URL)")
    per_hashtag = asyncio.run(export(settings, args.out, args.threshold, set(args.hashtag), args.max_per_hashtag))
    summary = {"out": str(args.out), "threshold": args.threshold, "rows": sum(per_hashtag.values())}
    print(json.dumps(summary | {"per_hashtag": dict(sorted(per_hashtag.items()))}))


if __name__ == "__main__":
    main()
