"""End to end on the real stack: a replayed stream reaches the sink, broken input the DLQ."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from tools import demo_data

from .conftest import ROOT

pytestmark = pytest.mark.integration

IMAGE_SERVER = "http://127.0.0.1:8765"
SINK_API = "http://127.0.0.1:8080/api/predictions"


def replay(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "services.ingest", "replay", str(path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def sink_get(path: str) -> Any:
    with urllib.request.urlopen(SINK_API + path, timeout=5) as response:
        return json.load(response)


def wait_for_predictions(wanted: set[tuple[str, str]], timeout_s: float = 240) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(found) < len(wanted):
        for tweet_id, media_key in wanted - found.keys():
            try:
                found[(tweet_id, media_key)] = sink_get(f"/{tweet_id}/{media_key}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
        time.sleep(1)
    return found


def dead_letters(topic: str, match: set[str], expected: int, timeout_s: float = 120) -> list[dict[str, Any]]:
    """Dead letters on `topic` whose key or value names one of `match`."""
    consumer = Consumer(
        {"bootstrap.servers": "localhost:9092", "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(letters) < expected:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            key = (message.key() or b"").decode()
            value = message.value() or b""
            if key in match or any(m.encode() in value for m in match):
                letters.append({"key": key, "value": value, "headers": dict(message.headers() or [])})
    finally:
        consumer.close()
    return letters


def test_replayed_stream_reaches_the_sink_and_broken_input_the_dlq(stack: None, tmp_path: Path) -> None:
    id_base = time.time_ns() // 1000 * 1000  # unique per run: the sink may hold earlier runs
    stream = tmp_path / "stream.jsonl"
    demo_data.write_stream(stream, IMAGE_SERVER, id_base, url_suffix=f"?run={id_base}")  # new to the fetch cache
    payloads = [json.loads(line) for line in stream.read_text().splitlines() if line.strip().endswith("}")]
    with_media = [p for p in payloads if p["includes"].get("media")]
    good = {
        (p["data"]["id"], m["media_key"]): p
        for p in with_media
        for m in p["includes"]["media"]
        if "/photo-" in (m.get("url") or m.get("preview_image_url"))
    }
    broken = {
        p["data"]["id"]: p["includes"]["media"][0]["url"].rsplit("/", 1)[1]
        for p in with_media
        if "/photo-" not in p["includes"]["media"][0].get("url", "/photo-")
    }

    summary = replay(stream)

    assert summary["produced"] == len(with_media)
    assert summary["without_images"] == len(payloads) - len(with_media)
    assert summary["dead_letters"] == {"bad_json": 1}

    found = wait_for_predictions(set(good))
    assert set(found) == set(good), f"missing in the sink: {set(good) - set(found)}"
    for (tweet_id, _), item in found.items():
        payload = good[(tweet_id, item["media_key"])]
        assert item["hashtags"], item
        assert all(0.0 <= h["score"] <= 1.0 for h in item["hashtags"])
        assert set(item["scores"]) >= {"cats", "dogs", "others"}
        assert item["model_name"] == "resnet50"
        assert item["text"] == payload["data"]["text"]
        expected_priority = 2 if any(r["tag"].startswith("targeted") for r in payload["matching_rules"]) else 1
        assert item["priority"] == expected_priority
        assert item["ingest_ts_ms"] <= item["fetch_ts_ms"] <= item["classify_ts_ms"] <= item["stored_ts_ms"]

    letters = dead_letters("tweets.dlq", set(broken) | {str(id_base + 999_999)}, expected=len(broken) + 1)
    reasons = {letter["key"] or "cut line": letter["headers"]["error"].decode() for letter in letters}
    expected_reasons = {b.name: b.reason for b in demo_data.BROKEN}
    assert reasons == {
        **{tweet_id: expected_reasons[name] for tweet_id, name in broken.items()},
        "cut line": "bad_json",
    }
