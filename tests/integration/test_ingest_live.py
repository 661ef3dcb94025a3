"""The live ingest service, as a process, against a local server speaking X's API and the real Kafka.

The server scripts a hard session: a connection cut mid-post, a 429 with its reset time, a
503, a silent stall, an operational disconnect, and posts delivered again after reconnects.
Every post with images must reach the topic exactly once, the rules must be synced, the
recording must replay into the same records, and the token must never reach a log line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from services.common.avro import TWEETS
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.stages import TopicSpec
from services.ingest import rules
from services.ingest.backfill import search_queries
from tests.fakes.x_api import KEEP_ALIVE, OPERATIONAL_DISCONNECT, Connection, FakeXApi, post, search_page

from .conftest import ROOT
from .processes import free_port

pytestmark = pytest.mark.integration

TOKEN = f"AAAAAAAAAAAAAAAAAAAAA%2Ftagstream-test-{uuid.uuid4().hex}"


def tweet_id(n: int) -> str:
    return str(1_800_000_000_000_000_000 + n)


@pytest.fixture
def topics(kafka: None) -> Iterator[dict[str, str]]:
    run = uuid.uuid4().hex[:10]
    names = {
        "out": f"test-ingest-live-{run}",
        "dlq": f"test-ingest-live-{run}.dlq",
        "replay": f"test-ingest-replay-{run}",
        "replay_dlq": f"test-ingest-replay-{run}.dlq",
        "backfill": f"test-ingest-backfill-{run}",
    }
    # One partition each: records keep their order, so the last post marks the end.
    ensure_topics(KafkaSettings(), [TopicSpec(name, 1) for name in names.values()])
    yield names
    admin = AdminClient(KafkaSettings().client_config())
    for future in admin.delete_topics(list(names.values()), operation_timeout=30).values():
        future.result()


def service_env(x_api: FakeXApi, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "X_"))}
    return env | {
        "X_BEARER_TOKEN": TOKEN,
        "X_API_BASE_URL": x_api.base_url,
        "LOG_LEVEL": "DEBUG",  # the most a library could log: the token must still not appear
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def consume(topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 60) -> list[Any]:
    """Messages of `topic` from the start until `done(messages)` or the timeout (run in a thread)."""
    consumer = Consumer(
        {"bootstrap.servers": KafkaSettings().bootstrap_servers, "group.id": f"test-{uuid.uuid4()}",
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(messages):
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                messages.append(message)
    finally:
        consumer.close()
    return messages


def metric_values(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


async def run_cli(*args: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.ingest", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout.decode().strip().splitlines()[-1]), stderr.decode()


# --- the session the fake server plays --------------------------------------------------

POSTS = [tweet_id(n) for n in range(1, 8)]  # every post with images, in stream order
NO_IMAGES = tweet_id(50)
NOT_A_POST = b'{"data": {"id": "12ab", "text": "an id X never sends"}}\r\n'
#: a line twice INGEST_MAX_LINE_BYTES' default: aiohttp's readline gave up at 512 KiB
LONG_LINE = b'{"data": {"id": "77", "text": "' + b"x" * (2 << 20) + b'"}}\r\n'


def scripted_session() -> list[Connection]:
    p = [post(i) for i in POSTS]
    cut_short = json.dumps(p[2]).encode()[:60]  # the connection breaks inside this post
    return [
        Connection([p[0], KEEP_ALIVE, p[1], post(NO_IMAGES, images=0), cut_short], end="cut"),
        Connection(status=429, reset_in_s=1),
        Connection(status=503),
        Connection([p[1], p[2], KEEP_ALIVE, p[3]], end="stall"),  # p[1] again
        Connection([p[3], p[4], NOT_A_POST, OPERATIONAL_DISCONNECT], end="hold"),  # p[3] again
        Connection([p[5], LONG_LINE, KEEP_ALIVE, p[6]], end="hold"),
    ]


@pytest.fixture
async def x_api() -> AsyncIterator[FakeXApi]:
    file_rules = rules.load_rules().rules
    hashtag, keyword = (q.query for q in search_queries("cats"))
    fake = FakeXApi(
        TOKEN,
        rules=[
            {"id": "100", "value": file_rules[0].value, "tag": file_rules[0].tag},  # up to date
            {"id": "101", "value": file_rules[1].value, "tag": "cats"},  # old tag
            {"id": "102", "value": "#ferrets has:images", "tag": "targeted:ferrets"},  # stale
        ],
        connections=scripted_session(),
        search_pages={
            hashtag: [search_page([post(tweet_id(n)) for n in range(100, 103)])],
            keyword: [search_page([post(tweet_id(n)) for n in range(200, 210)])],
        },
    )
    await fake.start()
    yield fake
    await fake.close()


async def test_live_ingest_survives_a_hard_session_and_delivers_every_post_once(
    x_api: FakeXApi, topics: dict[str, str], tmp_path: Path
) -> None:
    desired = {(r.value, r.tag) for r in rules.load_rules().rules}
    before = dict(x_api.rules)

    # 1. The dry run shows the diff and changes nothing.
    dry, dry_log = await run_cli("rules", "--dry-run", env=service_env(x_api))
    assert x_api.rules == before
    assert dry["dry_run"] is True
    assert [r["id"] for r in dry["keep"]] == ["100"]
    assert sorted(r["id"] for r in dry["delete"]) == ["101", "102"]
    assert len(dry["add"]) == len(desired) - 1

    # 2. The service syncs the rules and reads the stream.
    metrics_port = free_port()
    recording = tmp_path / "recorded.jsonl"
    stderr_file = tmp_path / "ingest.log"
    env = service_env(
        x_api,
        INGEST_OUTPUT_TOPIC=topics["out"],
        INGEST_DLQ_TOPIC=topics["dlq"],
        INGEST_METRICS_PORT=str(metrics_port),
        INGEST_RECORD_FILE=str(recording),
        INGEST_STALL_TIMEOUT_S="1.0",
        INGEST_NETWORK_BACKOFF_STEP_S="0.1",
        INGEST_NETWORK_BACKOFF_MAX_S="0.5",
        INGEST_HTTP_BACKOFF_START_S="0.2",
        INGEST_HTTP_BACKOFF_MAX_S="1",
        INGEST_RATE_LIMIT_BACKOFF_START_S="0.5",
        INGEST_RATE_LIMIT_BACKOFF_MAX_S="5",
    )
    with stderr_file.open("wb") as log_sink:
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.ingest", "run", cwd=ROOT, env=env,
            stdout=log_sink, stderr=log_sink,
        )  # fmt: skip
        try:
            last = POSTS[-1]
            messages = await asyncio.to_thread(
                consume, topics["out"], lambda ms: any(m.key() == last.encode() for m in ms)
            )
            assert service.returncode is None, "the service exited early"
            values = metric_values(metrics_port)
            health = healthz(metrics_port)
        finally:
            if service.returncode is None:
                service.send_signal(signal.SIGTERM)
            await asyncio.wait_for(service.wait(), 30)
    log_text = await asyncio.to_thread(stderr_file.read_text)
    assert service.returncode == 0, log_text

    # every post with images exactly once, in order, across the cut, the 429, the 503, the stall
    # and the operational disconnect; the post without images and the duplicates dropped
    keys = [m.key().decode() for m in messages]
    assert keys == POSTS, log_text
    records = [TWEETS.decode(m.value()) for m in messages]
    assert all(r["priority"] == 2 and r["matching_rules"][0]["tag"] == "targeted:cats" for r in records)
    assert all(r["media"] and r["author_username"] == "user42" for r in records)

    # the rules were synced: missing added, stale deleted, the matching one untouched
    assert {(r["value"], r.get("tag")) for r in x_api.rules.values()} == desired
    assert x_api.rules["100"] == before["100"]
    assert not {"101", "102"} & x_api.rules.keys()

    # reconnects, stalls and rate limits are counted
    scripted = scripted_session()

    def metric(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    assert metric("tagstream_x_stream_connects_total") == sum(c.status == 200 for c in scripted)
    for reason in ("network_error", "rate_limited", "http_error", "stall", "operational_disconnect"):
        assert metric("tagstream_x_stream_disconnects_total", reason=reason) == 1, reason
    assert metric("tagstream_x_stream_stalls_total") == 1
    assert metric("tagstream_x_rate_limits_total", endpoint="stream") == 1
    assert metric("tagstream_records_skipped_total", stage="ingest", reason="duplicate") == 2
    assert metric("tagstream_records_skipped_total", stage="ingest", reason="no_images") == 1
    assert metric("tagstream_records_produced_total", stage="ingest", topic=topics["out"]) == len(POSTS)
    assert metric("tagstream_dead_letters_total", stage="ingest", reason="bad_post") == 1
    assert metric("tagstream_dead_letters_total", stage="ingest", reason="line_too_long") == 1
    assert metric("tagstream_x_stream_error_messages_total", title="operational-disconnect") == 1
    assert metric("tagstream_x_stream_connected") == 1
    assert health == 200

    # the line that was not a post, and the one too long to read whole, went to the
    # dead-letter topic with their reasons; the stream went on after both
    letters = await asyncio.to_thread(consume, topics["dlq"], lambda ms: len(ms) >= 2)
    assert [dict(m.headers())["error"] for m in letters] == [b"bad_post", b"line_too_long"]
    long_letter = dict(letters[1].headers())
    assert long_letter["value_truncated"] == b"%d bytes: line_too_long" % len(LONG_LINE.rstrip(b"\n"))
    assert LONG_LINE.startswith(letters[1].value())
    assert len(letters[1].value()) == 64 * 1024

    # the token reached the server on every request and no log line
    assert x_api.unauthorized == 0
    lines = log_text.splitlines()
    assert any(json.loads(line).get("msg") == "stream connected" for line in lines if line.startswith("{"))
    for text in (log_text, dry_log):
        assert TOKEN not in text
        assert TOKEN.replace("%2F", "/") not in text

    # 3. The recording replays into the same records.
    summary, _ = await run_cli(
        "replay", str(recording),
        env=service_env(x_api, INGEST_OUTPUT_TOPIC=topics["replay"], INGEST_DLQ_TOPIC=topics["replay_dlq"]),
    )  # fmt: skip
    assert summary["produced"] == len(POSTS)
    assert summary["without_images"] == 1
    assert summary["dead_letters"] == {"bad_post": 1}
    replayed = await asyncio.to_thread(consume, topics["replay"], lambda ms: len(ms) >= len(POSTS))

    def comparable(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "ingest_ts_ms"}

    assert [comparable(TWEETS.decode(m.value())) for m in replayed] == [comparable(r) for r in records]


async def test_a_post_too_large_for_the_broker_is_dead_lettered_and_the_replay_goes_on(
    x_api: FakeXApi, topics: dict[str, str], tmp_path: Path
) -> None:
    huge = post(tweet_id(60))
    huge["data"]["text"] = "x" * (2 << 20)  # a record over the producer's and the broker's 1 MB
    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(b"".join(json.dumps(p).encode() + b"\n" for p in (post(POSTS[0]), huge, post(POSTS[1]))))
    summary, _ = await run_cli(
        "replay", str(stream), env=service_env(x_api, INGEST_OUTPUT_TOPIC=topics["out"], INGEST_DLQ_TOPIC=topics["dlq"])
    )  # fmt: skip
    assert (summary["produced"], summary["refused"], summary["dead_letters"]) == (2, 1, {"too_large": 1})
    produced = await asyncio.to_thread(consume, topics["out"], lambda ms: len(ms) >= 2)
    assert [m.key().decode() for m in produced] == POSTS[:2]
    (letter,) = await asyncio.to_thread(consume, topics["dlq"], lambda ms: len(ms) >= 1)
    headers = dict(letter.headers())
    assert headers["error"] == b"too_large"
    assert (headers["priority"], headers["value_truncated"].split(b" ")[1]) == (b"2", b"bytes:")
    assert letter.value() == json.dumps(huge).encode()[: 64 * 1024]


async def test_backfill_produces_the_same_records_as_the_stream(x_api: FakeXApi, topics: dict[str, str]) -> None:
    limit = 8  # more than the hashtag query holds: the keyword query supplies the rest
    summary, log = await run_cli(
        "backfill", "--query", "cats", "--limit", str(limit),
        env=service_env(x_api, INGEST_OUTPUT_TOPIC=topics["backfill"], INGEST_DLQ_TOPIC=topics["dlq"]),
    )  # fmt: skip
    assert summary["with_images"] == limit
    messages = await asyncio.to_thread(consume, topics["backfill"], lambda ms: len(ms) >= limit)
    records = [TWEETS.decode(m.value()) for m in messages]
    assert len({r["tweet_id"] for r in records}) == limit
    tags = [r["matching_rules"][0]["tag"] for r in records]
    assert tags == ["backfill:hashtag:cats"] * 3 + ["backfill:keyword:cats"] * (limit - 3)
    assert all(r["media"] and r["post_url"].startswith("https://x.com/user42/status/") for r in records)
    assert TOKEN not in log


async def test_a_restarted_ingest_does_not_write_again_what_it_wrote_before(
    topics: dict[str, str], tmp_path: Path
) -> None:
    """X resends posts after a reconnect; after a restart the duplicate window is filled again
    from the newest records of the topic, so a resend of a post written before is dropped."""
    earlier = [tweet_id(n) for n in range(300, 303)]
    later = tweet_id(303)
    fake = FakeXApi(TOKEN, rules=[], connections=[Connection([post(i) for i in [*earlier[1:], later]], end="hold")])
    await fake.start()
    try:
        env = service_env(fake, INGEST_OUTPUT_TOPIC=topics["out"], INGEST_DLQ_TOPIC=topics["dlq"])
        stream = tmp_path / "before.jsonl"  # what a previous run of the service wrote
        stream.write_bytes(b"".join(json.dumps(post(i)).encode() + b"\n" for i in earlier))
        summary, _ = await run_cli("replay", str(stream), env=env)
        assert summary["produced"] == len(earlier)

        port = free_port()
        env |= {"INGEST_METRICS_PORT": str(port), "INGEST_SYNC_RULES": "false"}
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.ingest", "run", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            messages = await asyncio.to_thread(
                consume, topics["out"], lambda ms: any(m.key() == later.encode() for m in ms)
            )
            await asyncio.sleep(1)  # a duplicate written after the last post would show up by now
            messages = await asyncio.to_thread(consume, topics["out"], lambda ms: len(ms) > len(earlier) + 1, 3)
            skipped = metric_values(port).get(
                ("tagstream_records_skipped_total", (("reason", "duplicate"), ("stage", "ingest"))), 0.0
            )
        finally:
            service.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(service.communicate(), 30)
    finally:
        await fake.close()
    assert [m.key().decode() for m in messages] == [*earlier, later], stderr.decode()[-3000:]
    assert skipped == 2
    assert b"duplicate window restored" in stderr
