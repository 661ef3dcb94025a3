"""The re-drive tool on the real broker, on fresh topics: dead letters go back to their source
once, with their envelope and a mark; filters by reason and time; a dry run writes nothing; a
crash between a batch's write and its commit, and a second run fencing the first, never put a
record back twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from services.common.avro import TWEETS
from services.common.deadletters import Source, dead_letter
from services.common.envelope import Envelope, from_headers
from services.common.kafka import Outgoing
from services.common.settings import KafkaSettings
from services.common.timeutil import now_ms
from tools.redrive import Selection, redrive

from .conftest import ROOT
from .processes import fresh_topics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]

KAFKA = KafkaSettings()
HOUR_MS = 3_600_000


@pytest.fixture
def group() -> str:
    return f"test-redrive-{uuid.uuid4().hex[:8]}"


def tweet(tweet_id: str, media_keys: tuple[str, ...] = ("3_1",)) -> bytes:
    return TWEETS.encode(
        {
            "tweet_id": tweet_id,
            "text": "t",
            "author_id": None,
            "author_username": None,
            "created_at": None,
            "lang": None,
            "post_url": f"https://x.com/i/web/status/{tweet_id}",
            "media": [
                {"media_key": k, "type": "photo", "url": f"https://img/{k}.jpg", "width": None, "height": None}
                for k in media_keys
            ],
            "matching_rules": [],
            "priority": int(tweet_id) % 3,
            "ingest_ts_ms": 1_790_000_000_000 + int(tweet_id),
        }
    )


def letter(dlq: str, source: str, n: int, reason: str) -> Outgoing:
    """The dead letter a fetcher writes for tweet `n`, read at offset `n` of `source`."""
    return dead_letter(
        stage="fetcher",
        topic=dlq,
        value=tweet(str(n)),
        key=str(n),
        reason=reason,
        detail="while testing",
        envelope=Envelope(n % 3, 1_790_000_000_000 + n),
        source=Source(source, 0, n),
    )


def write(records: list[Outgoing], timestamps_ms: list[int] | None = None) -> None:
    producer = Producer(KAFKA.client_config())
    for i, record in enumerate(records):
        timestamp = timestamps_ms[i] if timestamps_ms else 0
        producer.produce(record.topic, record.value, key=record.key, headers=list(record.headers), timestamp=timestamp)
    assert producer.flush(30) == 0


def read(topic: str, committed_only: bool = True) -> list[Message]:
    """Every record of `topic` now, as a read_committed (or read_uncommitted) reader sees it."""
    consumer = Consumer(
        KAFKA.client_config()
        | {
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    pending, out = set(partitions), []
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(500, 1.0):
            if message.error() is None:
                out.append(message)
            else:
                pending.discard(message.partition())
    consumer.close()
    assert not pending, f"{topic}: no end seen for partitions {pending}"
    return out


def keys(messages: list[Message]) -> list[str]:
    return sorted(str(m.key().decode() if isinstance(m.key(), bytes) else m.key()) for m in messages)  # type: ignore[union-attr]


def headers(message: Message) -> dict[str, bytes]:
    return dict(message.headers() or [])  # type: ignore[arg-type]


def test_dead_letters_go_back_once_with_their_envelope_and_a_mark(group: str) -> None:
    source, dlq = fresh_topics("source", "source.dlq", partitions=1)
    write([letter(dlq, source, n, "timeout" if n % 2 else "http_503") for n in range(10)])

    summary = redrive(KAFKA, dlq, Selection(), group=group, batch_size=4)

    assert summary.moved == {"timeout": 5, "http_503": 5}
    assert summary.moved_to == {source: 10}
    assert summary.transactions == 3
    copies = read(source)
    assert keys(copies) == sorted(str(n) for n in range(10))
    for copy in copies:
        n = int(copy.key())  # type: ignore[arg-type]
        assert copy.value() == tweet(str(n))
        assert from_headers(copy.headers()) == Envelope(n % 3, 1_790_000_000_000 + n)  # type: ignore[arg-type]
        assert headers(copy)["redriven_from"] == f"{dlq}/0/{n}".encode()
        assert headers(copy)["redriven_reason"] == (b"timeout" if n % 2 else b"http_503")

    again = redrive(KAFKA, dlq, Selection(), group=group)
    assert sum(again.moved.values()) == 0
    assert again.read == 0, "a second run starts where the first ended"
    write([letter(dlq, source, 10, "timeout")])
    third = redrive(KAFKA, dlq, Selection(), group=group)
    assert third.moved == {"timeout": 1}
    assert keys(read(source)) == sorted(str(n) for n in range(11)), "each exactly once"


def test_reasons_and_time_select_and_what_was_not_selected_stays_for_a_later_run(group: str) -> None:
    source, dlq = fresh_topics("source", "source.dlq", partitions=1)
    now = now_ms()
    reasons = ["timeout", "http_503", "timeout", "bad_avro", "timeout", "http_503", "timeout", "bad_avro"]
    old = {0, 1, 2, 3}  # written three hours ago
    stamps = [now - 3 * HOUR_MS if n in old else now - 60_000 for n in range(len(reasons))]
    write([letter(dlq, source, n, r) for n, r in enumerate(reasons)], stamps)

    dry = redrive(KAFKA, dlq, Selection(frozenset({"timeout"}), now - HOUR_MS), group=group, dry_run=True)
    assert dry.moved == {"timeout": 2}
    assert dry.left == {"before_since": 2, "not_selected": 4}
    assert read(source) == [], "a dry run writes nothing"

    recent_timeouts = redrive(KAFKA, dlq, Selection(frozenset({"timeout"}), now - HOUR_MS), group=group)
    assert recent_timeouts.moved == dry.moved
    assert keys(read(source)) == ["4", "6"]

    # The 503s were read past by the first run, and are still there for this one.
    unavailable = redrive(KAFKA, dlq, Selection(frozenset({"http_503"})), group=group)
    assert unavailable.moved == {"http_503": 2}
    assert unavailable.left["already_redriven"] == 0
    assert keys(read(source)) == ["1", "4", "5", "6"]

    # Left: the bad_avro ones. The old timeouts were settled by the run that read past them.
    rest = redrive(KAFKA, dlq, Selection(), group=group)
    assert rest.moved == {"bad_avro": 2}
    assert rest.left == {"already_redriven": 6}
    assert keys(read(source)) == ["1", "3", "4", "5", "6", "7"]
    assert sum(redrive(KAFKA, dlq, Selection(), group=group).moved.values()) == 0


def test_tweets_dlq_one_image_goes_back_alone_and_ingest_lines_are_ingested_again(
    group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, ingested, dlq = fresh_topics("tweets", "ingested", "tweets.dlq", partitions=1)
    monkeypatch.setenv("INGEST_OUTPUT_TOPIC", ingested)
    post = {
        "data": {"id": "42", "text": "a post", "attachments": {"media_keys": ["3_9"]}},
        "includes": {"media": [{"media_key": "3_9", "type": "photo", "url": "https://img/9.jpg"}]},
        "matching_rules": [{"id": "1", "tag": "targeted:cats"}],
    }
    image = dead_letter(
        stage="fetcher",
        topic=dlq,
        value=tweet("7", ("3_1", "3_2", "3_3")),
        key="7",
        reason="timeout",
        envelope=Envelope(1, 1_790_000_000_007),
        source=Source(source, 0, 7),
        extra=[("media_key", "3_2"), ("url", "https://img/3_2.jpg")],
    )
    line = json.dumps(post).encode()
    fixed = dead_letter(stage="ingest", topic=dlq, value=line, key=None, reason="bad_post", detail="old parser")
    broken = dead_letter(stage="ingest", topic=dlq, value=b"{not json", key=None, reason="bad_json")
    cut = dead_letter(
        stage="ingest",
        topic=dlq,
        value=b'{"data',
        key=None,
        reason="line_too_long",
        extra=[("value_truncated", "2 MB")],
    )
    write([image, fixed, broken, cut])

    summary = redrive(KAFKA, dlq, Selection(), group=group)

    assert summary.moved == {"timeout": 1, "bad_post": 1}
    assert summary.moved_to == {source: 1, ingested: 1}
    assert summary.failed_again == {"bad_json": 1}
    assert summary.left == {"truncated": 1}
    (back,) = read(source)
    assert [m["media_key"] for m in TWEETS.decode(back.value())["media"]] == ["3_2"]
    (new,) = read(ingested)
    record = TWEETS.decode(new.value())
    assert (record["tweet_id"], record["priority"]) == ("42", 2)
    assert from_headers(new.headers()) == Envelope(2, record["ingest_ts_ms"])  # type: ignore[arg-type]
    assert headers(new)["redriven_from"] == f"{dlq}/0/1".encode()
    letters = read(dlq)
    assert len(letters) == 5
    assert letters[-1].value() == b"{not json"
    assert headers(letters[-1])["redriven_from"] == f"{dlq}/0/2".encode()
    # The new dead letter is for a later run, after a later fix; this one's is done.
    assert redrive(KAFKA, dlq, Selection(), group=group, dry_run=True).failed_again == {"bad_json": 1}


CRASHING_RUN = """
import os, sys, time
from tools import redrive

real_commit = redrive.Transactions.commit
batches = 0


def commit_then_crash(self, records, topic, settled, consumer):
    global batches
    batches += 1
    if batches < int(os.environ["CRASH_AT_BATCH"]):
        return real_commit(self, records, topic, settled, consumer)
    self._call(self.producer.begin_transaction)
    for record in records:
        self._produce(record)
    assert self.producer.flush(30) == 0  # the copies are on the broker, in the open transaction
    if os.environ.get("HOLD_FILE"):  # wait, transaction open, until the test says go on
        open(os.environ["READY_FILE"], "w").close()
        while not os.path.exists(os.environ["HOLD_FILE"]):
            time.sleep(0.05)
        return real_commit_only(self, topic, settled, consumer)
    os._exit(17)  # no clean-up of any kind, as a kill -9


def real_commit_only(self, topic, settled, consumer):
    from confluent_kafka import TopicPartition
    offsets = [TopicPartition(topic, p, s.base, metadata=s.metadata()) for p, s in sorted(settled.items())]
    self._call(self.producer.send_offsets_to_transaction, offsets, consumer.consumer_group_metadata(), 30)
    self._call(self.producer.commit_transaction, 30)


redrive.Transactions.commit = commit_then_crash
sys.exit(redrive.main(sys.argv[1:]))
"""


def run_tool(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_crash_between_a_batch_write_and_its_commit_moves_nothing_twice(group: str) -> None:
    source, dlq = fresh_topics("source", "source.dlq", partitions=1)
    write([letter(dlq, source, n, "timeout") for n in range(35)])

    crashed = run_tool(["--topic", dlq, "--group", group, "--batch-size", "10"], {"CRASH_AT_BATCH": "2"})
    _, err = crashed.communicate(timeout=120)
    assert crashed.returncode == 17, err.decode()
    assert len(read(source, committed_only=False)) == 20, "the crash came after the second batch was written"
    assert keys(read(source)) == sorted(str(n) for n in range(10)), "only the first batch committed"

    summary = redrive(KAFKA, dlq, Selection(), group=group, batch_size=10)

    assert summary.moved == {"timeout": 25}
    assert keys(read(source)) == sorted(str(n) for n in range(35)), "each exactly once"


def test_a_second_run_fences_the_first_which_commits_nothing(group: str, tmp_path: Path) -> None:
    source, dlq = fresh_topics("source", "source.dlq", partitions=1)
    write([letter(dlq, source, n, "timeout") for n in range(12)])
    ready, hold = tmp_path / "ready", tmp_path / "hold"
    first = run_tool(
        ["--topic", dlq, "--group", group, "--batch-size", "5"],
        {"CRASH_AT_BATCH": "2", "READY_FILE": str(ready), "HOLD_FILE": str(hold)},
    )
    try:
        wait_until("the first run holding its second batch open", ready.exists, 120, every_s=0.2)

        second = redrive(KAFKA, dlq, Selection(), group=group, batch_size=5)

        assert second.moved == {"timeout": 7}
        hold.touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.wait()
    assert first.returncode == 1, err.decode()
    assert b"another run of it started and took over" in err, err.decode()
    assert keys(read(source)) == sorted(str(n) for n in range(12)), "each exactly once"
    assert len(read(source, committed_only=False)) == 17, "the fenced batch was written, and aborted"


def test_make_redrive_dry_run_prints_its_counts(group: str) -> None:
    source, dlq = fresh_topics("source", "source.dlq", partitions=1)
    write([letter(dlq, source, n, r) for n, r in enumerate(["timeout", "timeout", "http_404"])])
    # -o: never set the virtualenv up again from here, whatever the timestamps say
    make = ["make", "-s", "-o", ".venv/.installed-stack", "redrive"]
    result = subprocess.run(
        [*make, f"TOPIC={dlq}", "REASON=timeout", "SINCE=1h", "DRY_RUN=1", f"GROUP={group}"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert summary["moved"] == {"timeout": 2}
    assert summary["dry_run"] is True
    assert summary["left"] == {"not_selected": 1}
    assert read(source) == []
    assert Counter(headers(m)["error"] for m in read(dlq)) == {b"timeout": 2, b"http_404": 1}
