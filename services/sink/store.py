"""The predictions store: one interface, SQLite (default) and PostgreSQL implementations.

One row per image, upserted on (tweet id, media key), so a redelivered record replaces
its earlier copy. Reads are newest first by classification time and paged with a keyset
cursor: the position (classify time, tweet id, media key) of the last item served, so
pages neither skip nor repeat items when new predictions arrive between requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.errors import RecordError, RetryableError


class StoreUnavailable(RetryableError):
    """The database cannot be reached or cannot write now; the operation may succeed later."""


Prediction = dict[str, Any]
"""A stored prediction as the API serves it (the `Prediction` schema of openapi.yaml)."""

OnStored = Callable[[Prediction], None]

# Columns of the `predictions` table in both backends, in insert order.
COLUMNS = (
    "tweet_id", "media_key", "image_url", "post_url", "text", "author_username", "priority", "hashtags",
    "scores", "top_score", "model_name", "model_version", "model_weights_meaningful", "ingest_ts_ms",
    "fetch_ts_ms", "classify_ts_ms", "stored_ts_ms",
)  # fmt: skip

# What the API shows of a row; `top_score` is an index helper.
_INTERNAL_COLUMNS = frozenset({"top_score"})


# Both stores keep times as signed 64-bit integers.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Far more than a cursor of this API needs (a time and two ids), far less than would cost to parse.
MAX_CURSOR_LENGTH = 4096


def storable_text(text: str) -> bool:
    """Whether both stores can hold and compare `text`: PostgreSQL text has no NUL, and a lone
    surrogate is not UTF-8 at all."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the sort key of its last item."""

    classify_ts_ms: int
    tweet_id: str
    media_key: str

    def encode(self) -> str:
        raw = json.dumps([self.classify_ts_ms, self.tweet_id, self.media_key], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor `encode` wrote; ValueError for anything else, including what no store could hold."""
        if len(text) > MAX_CURSOR_LENGTH:
            raise ValueError("cursor is not one this API returned")
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error, RecursionError) as exc:  # RecursionError: deeply nested JSON
            raise ValueError("cursor is not one this API returned") from exc
        if (
            not isinstance(raw, list)
            or len(raw) != 3
            or not isinstance(raw[0], int)
            or isinstance(raw[0], bool)
            or not INT64_MIN <= raw[0] <= INT64_MAX
            or not all(isinstance(part, str) and storable_text(part) for part in raw[1:])
        ):
            raise ValueError("cursor is not one this API returned")
        return cls(raw[0], raw[1], raw[2])

    @classmethod
    def after(cls, item: Prediction) -> Cursor:
        return cls(item["classify_ts_ms"], item["tweet_id"], item["media_key"])


@dataclass(frozen=True)
class PredictionQuery:
    """Recent predictions, newest first.

    `hashtag`: only images suggested this hashtag; `min_score`: only images with a suggested
    hashtag (that one, when given) scoring at least this; `since_ms` (inclusive) and
    `until_ms` (exclusive) bound the classification time.
    """

    limit: int = 50
    hashtag: str | None = None
    min_score: float = 0.0
    since_ms: int | None = None
    until_ms: int | None = None
    cursor: Cursor | None = None


@dataclass(frozen=True)
class Page:
    items: list[Prediction]
    next_cursor: Cursor | None


@dataclass(frozen=True)
class HashtagCount:
    hashtag: str
    count: int


@dataclass(frozen=True)
class DatasetRow:
    """One (image, hashtag) pair over the export threshold."""

    tweet_id: str
    media_key: str
    image_url: str
    hashtag: str
    score: float


class Store(Protocol):
    """What the sink, its API and the dataset export need from a store."""

    backend: str

    async def upsert(self, prediction: Mapping[str, Any]) -> Prediction:
        """Store one `predictions` record (insert or replace); return it as stored."""
        ...

    async def get(self, tweet_id: str, media_key: str) -> Prediction | None: ...

    async def recent(self, query: PredictionQuery) -> Page: ...

    async def hashtag_counts(
        self, *, since_ms: int, until_ms: int | None, min_score: float = 0.0, limit: int = 100
    ) -> list[HashtagCount]:
        """Images per suggested hashtag classified in [since_ms, until_ms) (no end: None), most first."""
        ...

    def confident(self, threshold: float) -> AsyncIterator[DatasetRow]:
        """Every suggested hashtag scoring at least `threshold`, by hashtag then best score first."""
        ...

    async def count(self) -> int: ...

    async def watch(self, on_stored: OnStored, listening: asyncio.Event | None = None) -> None:
        """Call `on_stored` with each prediction stored from now on, until cancelled.

        `listening` is set once nothing stored from then on can be missed (and again after
        a reconnection).

        SQLite: the writes of this process. PostgreSQL: the writes of every sink replica
        sharing the database (LISTEN/NOTIFY).
        """
        ...

    async def close(self) -> None: ...


def to_row(prediction: Mapping[str, Any], stored_ts_ms: int) -> dict[str, Any]:
    """The `predictions` row of a record; hashtags and scores as JSON text.

    Raises RecordError for a record no store can keep: an id or hashtag that could never be
    looked up (NUL, which PostgreSQL text cannot hold), a score that cannot be ranked (NaN,
    infinite; JSON has no such numbers either).
    """
    check_storable(prediction)
    hashtags = distinct_hashtags(prediction["hashtags"])
    row = {name: prediction.get(name) for name in COLUMNS}
    row["hashtags"] = json.dumps(hashtags)
    row["scores"] = json.dumps(dict(prediction["scores"]))
    row["top_score"] = max((h["score"] for h in hashtags), default=0.0)
    row["stored_ts_ms"] = stored_ts_ms
    return row


def check_storable(prediction: Mapping[str, Any]) -> None:
    for name in ("tweet_id", "media_key"):
        if not storable_text(prediction[name]):
            raise RecordError("bad_record", f"{name} holds a NUL character or a lone surrogate")
    labelled = [("hashtags", h["hashtag"], h["score"]) for h in prediction["hashtags"]]
    labelled += [("scores", label, score) for label, score in prediction["scores"].items()]
    for field, label, score in labelled:
        if not storable_text(label):
            raise RecordError("bad_record", f"{field}: {label!r} holds a NUL character or a lone surrogate")
        if not math.isfinite(score):
            raise RecordError("bad_record", f"{field}: the score of {label!r} is {score}")


def distinct_hashtags(hashtags: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each hashtag once, at its best score, in the order of first mention (the record's is best first)."""
    best: dict[str, float] = {}
    for h in hashtags:
        best[h["hashtag"]] = max(best.get(h["hashtag"], h["score"]), h["score"])
    return [{"hashtag": tag, "score": score} for tag, score in best.items()]


def to_prediction(row: Mapping[str, Any]) -> Prediction:
    """The API's view of a stored row (SQLite gives JSON as text, PostgreSQL as values)."""
    item = {key: value for key, value in row.items() if key not in _INTERNAL_COLUMNS}
    for key in ("hashtags", "scores"):
        if isinstance(item[key], str):
            item[key] = json.loads(item[key])
    if item["model_weights_meaningful"] is not None:  # SQLite has no booleans: 0 or 1
        item["model_weights_meaningful"] = bool(item["model_weights_meaningful"])
    # Ingest to stored: how long the post took to become visible here.
    item["end_to_end_ms"] = item["stored_ts_ms"] - item["ingest_ts_ms"]
    return item


def served_model(newest: Prediction | None) -> dict[str, Any] | None:
    """The model that made the newest stored prediction, as `GET /api/model` describes it.

    The predictions carry what the model declared when the classifier read it, so this says
    which model made what the store holds now: a model swapped in shows here with its first
    prediction, and rows made before keep their own model's word.
    """
    if newest is None:
        return None
    return {
        "name": newest["model_name"],
        "version": newest["model_version"],
        "weights_meaningful": newest["model_weights_meaningful"],
        "classify_ts_ms": newest["classify_ts_ms"],
    }


def page_of(rows: list[Prediction], limit: int) -> Page:
    """A page from up to `limit + 1` rows: the extra one only says there is more."""
    items = rows[:limit]
    more = len(rows) > limit
    return Page(items=items, next_cursor=Cursor.after(items[-1]) if more and items else None)


def matches(item: Prediction, hashtag: str | None, min_score: float) -> bool:
    """The `hashtag` / `min_score` filter of PredictionQuery, for one prediction in memory."""
    return any((hashtag is None or h["hashtag"] == hashtag) and h["score"] >= min_score for h in item["hashtags"]) or (
        hashtag is None and min_score <= 0 and not item["hashtags"]
    )
