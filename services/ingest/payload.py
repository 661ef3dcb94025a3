"""Turn one X API v2 filtered-stream payload into a `tweets` record.

A payload is what the stream delivers for one post with `expansions=attachments.media_keys`:
`{"data": {...}, "includes": {"media": [...], "users": [...]}, "matching_rules": [...]}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.common.errors import RecordError

IMAGE_BEARING_TYPES = {"photo", "video", "animated_gif"}


class PayloadError(RecordError):
    """The payload is not a post this system can read; `reason` is a short metric-safe code."""


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """Decode one line of the stream; None for a keep-alive (an empty line)."""
    text = line.decode("utf-8", errors="strict") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise PayloadError("bad_json", str(exc)) from exc
    if not isinstance(payload, dict):
        raise PayloadError("bad_json", "payload is not a JSON object")
    return payload


def priority_for(matching_rules: list[dict[str, Any]], priorities: Mapping[str, int], default: int) -> int:
    """The highest priority among the post's matching rules.

    A rule tag's class is the part before its first ':' (`targeted:cats` → `targeted`);
    `priorities` maps classes, or whole tags, to priorities. Higher is more important.
    """
    best: int | None = None
    for rule in matching_rules:
        tag = rule.get("tag") or ""
        for key in (tag, tag.split(":", 1)[0]):
            if key in priorities:
                best = priorities[key] if best is None else max(best, priorities[key])
                break
    return default if best is None else best


def to_tweet_record(
    payload: dict[str, Any], *, priorities: Mapping[str, int], default_priority: int, ingest_ts_ms: int
) -> dict[str, Any] | None:
    """The `tweets` record for a post, or None when it has no images."""
    data = payload.get("data")
    if not isinstance(data, dict):
        raise PayloadError("not_a_post", "payload has no 'data' object")
    tweet_id = data.get("id")
    if not isinstance(tweet_id, str) or not tweet_id.isdigit():
        raise PayloadError("bad_post", f"post id {tweet_id!r} is not a numeric string")
    includes = payload.get("includes") or {}
    media = _images_of(data, includes.get("media") or [])
    if not media:
        return None
    author_id = data.get("author_id")
    username = _username(author_id, includes.get("users") or [])
    rules = [
        {"id": str(rule.get("id", "")), "tag": rule.get("tag")}
        for rule in payload.get("matching_rules") or []
        if isinstance(rule, dict)
    ]
    return {
        "tweet_id": tweet_id,
        "text": str(data.get("text", "")),
        "author_id": author_id,
        "author_username": username,
        "created_at": data.get("created_at"),
        "lang": data.get("lang"),
        "post_url": f"https://x.com/{username or 'i/web'}/status/{tweet_id}",
        "media": media,
        "matching_rules": rules,
        "priority": priority_for(rules, priorities, default_priority),
        "ingest_ts_ms": ingest_ts_ms,
    }


def _images_of(data: dict[str, Any], media: list[Any]) -> list[dict[str, Any]]:
    """The post's images, in attachment order: photos, and the preview of videos and GIFs."""
    keys = (data.get("attachments") or {}).get("media_keys") or []
    by_key = {m.get("media_key"): m for m in media if isinstance(m, dict)}
    images = []
    for key in keys:
        item = by_key.get(key)
        if item is None or item.get("type") not in IMAGE_BEARING_TYPES:
            continue
        url = item.get("url") if item["type"] == "photo" else item.get("preview_image_url")
        if not url:
            continue
        images.append(
            {
                "media_key": str(key),
                "type": item["type"],
                "url": url,
                "width": _int_or_none(item.get("width")),
                "height": _int_or_none(item.get("height")),
            }
        )
    return images


def _username(author_id: Any, users: list[Any]) -> str | None:
    for user in users:
        if isinstance(user, dict) and user.get("id") == author_id and isinstance(user.get("username"), str):
            return str(user["username"])
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def stream_errors(payload: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The errors of a stream message that carries no post (X's system messages), else None.

    A payload with both `data` and `errors` is a post with partial errors (say, a media item
    that could not be expanded): still a post.
    """
    if "data" in payload:
        return None
    errors = payload.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    return [e if isinstance(e, dict) else {"detail": str(e)} for e in errors]


def is_operational_disconnect(errors: list[dict[str, Any]]) -> bool:
    """X announces that it is about to close the stream for its own reasons: reconnect."""
    for error in errors:
        kind = str(error.get("type") or "")
        if error.get("title") == "operational-disconnect" or kind.endswith("/operational-disconnect"):
            return True
        if error.get("disconnect_type"):
            return True
    return False
