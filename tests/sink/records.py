"""Records for the sink's tests."""

from __future__ import annotations

from typing import Any


def prediction(
    tweet_id: str = "1",
    media_key: str = "3_1",
    tags: tuple[tuple[str, float], ...] = (("cats", 0.9),),
    ts: int = 1_000_000,
    **overrides: Any,
) -> dict[str, Any]:
    """A `predictions` record as the classifier writes it."""
    record: dict[str, Any] = {
        "tweet_id": tweet_id,
        "media_key": media_key,
        "image_url": f"https://pbs.example/{tweet_id}_{media_key}.jpg",
        "post_url": f"https://x.com/i/web/status/{tweet_id}",
        "text": "<script>alert(1)</script> & friends",
        "author_username": "alice",
        "priority": 1,
        "hashtags": [{"hashtag": tag, "score": score} for tag, score in tags],
        "scores": {tag: score for tag, score in tags} | {"others": 0.01},
        "model_name": "resnet50",
        "model_version": "1",
        "model_weights_meaningful": False,
        "ingest_ts_ms": ts - 50,
        "fetch_ts_ms": ts - 20,
        "classify_ts_ms": ts,
        "inference_ms": 12.5,
        "batch_size": 4,
    }
    return record | overrides
