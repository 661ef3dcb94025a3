"""The read queries, one text for both backends; only the placeholder style differs.

`param(name)` renders a named placeholder: `:name` for sqlite3, `%(name)s` for psycopg.
Both backends index `predictions (classify_ts_ms, tweet_id, media_key)` and
`prediction_hashtags (hashtag, classify_ts_ms, tweet_id, media_key)`, so a page is an
index range scan whichever filter is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .store import PredictionQuery

Param = Callable[[str], str]


def sqlite_param(name: str) -> str:
    return f":{name}"


def psycopg_param(name: str) -> str:
    return f"%({name})s"


def recent(query: PredictionQuery, param: Param) -> tuple[str, dict[str, Any]]:
    """A page of predictions, one row more than the limit to tell whether another page follows."""
    # With a hashtag the scan runs over that hashtag's rows; without, over all predictions.
    keyed = "h" if query.hashtag is not None else "p"
    where: list[str] = []
    params: dict[str, Any] = {"limit": query.limit + 1}
    if query.hashtag is not None:
        source = "prediction_hashtags h JOIN predictions p USING (tweet_id, media_key)"
        where.append(f"h.hashtag = {param('hashtag')}")
        params["hashtag"] = query.hashtag
        if query.min_score > 0:
            where.append(f"h.score >= {param('min_score')}")
            params["min_score"] = query.min_score
    else:
        source = "predictions p"
        if query.min_score > 0:
            where.append(f"p.top_score >= {param('min_score')}")
            params["min_score"] = query.min_score
    if query.since_ms is not None:
        where.append(f"{keyed}.classify_ts_ms >= {param('since_ms')}")
        params["since_ms"] = query.since_ms
    if query.until_ms is not None:
        where.append(f"{keyed}.classify_ts_ms < {param('until_ms')}")
        params["until_ms"] = query.until_ms
    if query.cursor is not None:
        where.append(
            f"({keyed}.classify_ts_ms, {keyed}.tweet_id, {keyed}.media_key) "
            f"< ({param('c_ts')}, {param('c_tweet')}, {param('c_media')})"
        )
        params |= {"c_ts": query.cursor.classify_ts_ms, "c_tweet": query.cursor.tweet_id}
        params["c_media"] = query.cursor.media_key
    sql = (
        f"SELECT p.* FROM {source}"  # noqa: S608 - fixed fragments; values are parameters
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {keyed}.classify_ts_ms DESC, {keyed}.tweet_id DESC, {keyed}.media_key DESC"
        + f" LIMIT {param('limit')}"
    )
    return sql, params


def hashtag_counts(
    since_ms: int, until_ms: int | None, min_score: float, limit: int, param: Param
) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"since_ms": since_ms, "min_score": min_score, "limit": limit}
    window = f"classify_ts_ms >= {param('since_ms')}"
    if until_ms is not None:
        window += f" AND classify_ts_ms < {param('until_ms')}"
        params["until_ms"] = until_ms
    sql = (
        f"SELECT hashtag, count(*) AS n FROM prediction_hashtags WHERE {window}"  # noqa: S608 - values are parameters
        f" AND score >= {param('min_score')}"
        f" GROUP BY hashtag ORDER BY n DESC, hashtag ASC LIMIT {param('limit')}"
    )
    return sql, params


def confident(threshold: float, param: Param, extra_columns: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """Confident (image, hashtag) pairs; `extra_columns` of `predictions` a backend needs besides."""
    extra = "".join(f", p.{c}" for c in extra_columns)
    sql = (
        f"SELECT p.tweet_id, p.media_key, p.image_url, h.hashtag, h.score{extra}"  # noqa: S608 - values are parameters
        " FROM prediction_hashtags h JOIN predictions p USING (tweet_id, media_key)"
        f" WHERE h.score >= {param('threshold')}"
        " ORDER BY h.hashtag ASC, h.score DESC, p.tweet_id ASC, p.media_key ASC"
    )
    return sql, {"threshold": threshold}
