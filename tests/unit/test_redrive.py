"""The re-drive tool's decisions and bookkeeping (tools/redrive.py), without a broker; the runs
on a real broker are in tests/integration/test_redrive.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from services.common.avro import TWEETS
from services.common.deadletters import Source, dead_letter
from services.common.envelope import Envelope, from_headers
from services.common.kafka import Outgoing
from services.ingest.payload import PayloadError
from tools.redrive import (
    Destinations,
    Leave,
    Letter,
    Move,
    Progress,
    Selection,
    decide,
    parse_reasons,
    parse_since,
)

NOW = 1_800_000_000_000
ENVELOPE = Envelope(2, 1_790_000_000_000)


def post(media_keys: tuple[str, ...] = ("3_1", "3_2")) -> dict[str, Any]:
    return {
        "tweet_id": "17",
        "text": "t",
        "author_id": None,
        "author_username": None,
        "created_at": None,
        "lang": None,
        "post_url": "https://x.com/i/web/status/17",
        "media": [
            {"media_key": k, "type": "photo", "url": f"https://img/{k}.jpg", "width": None, "height": None}
            for k in media_keys
        ],
        "matching_rules": [],
        "priority": ENVELOPE.priority,
        "ingest_ts_ms": ENVELOPE.ingest_ts_ms,
    }


def letter(record: Outgoing, offset: int = 5, timestamp_ms: int = NOW) -> Letter:
    return Letter(record.topic, 0, offset, timestamp_ms, record.key, record.value, list(record.headers))


def fetcher_letter(reason: str = "timeout", offset: int = 5, **extra: Any) -> Letter:
    record = dead_letter(
        stage="fetcher",
        topic="tweets.dlq",
        value=TWEETS.encode(post()),
        key="17",
        reason=reason,
        detail="d",
        envelope=ENVELOPE,
        source=Source("tweets", 1, 40),
        **extra,
    )
    return letter(record, offset)


def ingest_letter(line: bytes, reason: str = "bad_post", **extra: Any) -> Letter:
    record = dead_letter(stage="ingest", topic="tweets.dlq", value=line, key=None, reason=reason, detail="d", **extra)
    return letter(record)


def no_ingest() -> Destinations:
    raise AssertionError("only ingest's own dead letters need ingest's parser")


def reingesting(result: dict[str, Any] | Exception | None) -> Callable[[], Destinations]:
    def reingest(line: bytes) -> dict[str, Any] | None:
        if isinstance(result, Exception):
            raise result
        return result

    return lambda: Destinations("tweets-out", reingest)


ALL = Selection()
START = Progress(0)


def headers(record: Outgoing) -> dict[str, bytes]:
    return dict(record.headers)


# --- deciding ---------------------------------------------------------------------------------


def test_a_dead_letter_goes_back_to_its_source_with_its_key_envelope_and_marks() -> None:
    decision = decide(fetcher_letter(), ALL, START, no_ingest)
    assert isinstance(decision, Move)
    assert decision.outcome == "moved"
    record = decision.record
    assert (record.topic, record.key, record.value) == ("tweets", "17", TWEETS.encode(post()))
    assert from_headers(record.headers) == ENVELOPE
    assert headers(record)["redriven_from"] == b"tweets.dlq/0/5"
    assert headers(record)["redriven_reason"] == b"timeout"
    # the dead letter's own bookkeeping stays behind
    assert not {"error", "error_detail", "stage", "source_topic", "source_offset"} & set(headers(record))


def test_one_failed_image_goes_back_as_the_post_with_that_image_only() -> None:
    decision = decide(
        fetcher_letter(extra=[("media_key", "3_2"), ("url", "https://img/3_2.jpg")]), ALL, START, no_ingest
    )
    assert isinstance(decision, Move)
    assert [m["media_key"] for m in TWEETS.decode(decision.record.value)["media"]] == ["3_2"]


def test_a_media_key_the_post_does_not_have_sends_the_post_as_it_was() -> None:
    decision = decide(fetcher_letter(extra=[("media_key", "9_9")]), ALL, START, no_ingest)
    assert isinstance(decision, Move)
    assert decision.record.value == TWEETS.encode(post())


def test_a_dead_letter_without_envelope_headers_goes_back_without_them() -> None:
    record = dead_letter(
        stage="classifier",
        topic="images.dlq",
        value=b"\x00junk",
        key="1",
        reason="bad_avro",
        source=Source("images", 0, 1),
    )
    decision = decide(letter(record), ALL, START, no_ingest)
    assert isinstance(decision, Move)
    assert from_headers(decision.record.headers) is None
    assert decision.record.value == b"\x00junk"


@pytest.mark.parametrize(
    ("selection", "progress", "timestamp_ms", "why"),
    [
        (Selection(frozenset({"http_503"})), START, NOW, "not_selected"),
        (ALL, Progress(6), NOW, "already_redriven"),
        (Selection(frozenset({"timeout"})), Progress(0, {"timeout": 6}), NOW, "already_redriven"),
        (ALL, Progress(0, {"http_503": 6}), NOW, None),  # another reason's frontier does not count
        (Selection(since_ms=NOW), START, NOW - 1, "before_since"),
        (Selection(since_ms=NOW), START, NOW, None),
    ],
)
def test_what_a_selection_and_progress_leave(
    selection: Selection, progress: Progress, timestamp_ms: int, why: str | None
) -> None:
    one = fetcher_letter()
    decision = decide(
        Letter(one.topic, 0, one.offset, timestamp_ms, one.key, one.value, one.headers), selection, progress, no_ingest
    )
    if why is None:
        assert isinstance(decision, Move)
    else:
        assert decision == Leave(why)


@pytest.mark.parametrize("source", ["", "tweets.dlq", "images.dlq", "tweets.shed"])
def test_a_source_that_is_no_data_topic_is_refused(source: str) -> None:
    one = fetcher_letter()
    changed = [(n, source.encode() if n == "source_topic" else v) for n, v in one.headers]
    assert decide(Letter(one.topic, 0, 5, NOW, one.key, one.value, changed), ALL, START, no_ingest) == Leave(
        "bad_source"
    )


def test_a_truncated_dead_letter_is_left() -> None:
    one = fetcher_letter(extra=[("value_truncated", "3000000 bytes: too large")])
    assert decide(one, ALL, START, no_ingest) == Leave("truncated")
    line = ingest_letter(b'{"data": {"id": "1"', reason="line_too_long", extra=[("value_truncated", "2 MB")])
    assert decide(line, ALL, START, no_ingest) == Leave("truncated")


def test_a_stage_dead_letter_without_a_source_is_left() -> None:
    record = dead_letter(stage="classifier", topic="images.dlq", value=b"x", key=None, reason="bad_avro")
    assert decide(letter(record), ALL, START, no_ingest) == Leave("no_source")


def test_an_ingest_line_is_ingested_again_with_a_fresh_envelope() -> None:
    fresh = {**post(), "priority": 1, "ingest_ts_ms": NOW}
    decision = decide(ingest_letter(b'{"data": {}}'), ALL, START, reingesting(fresh))
    assert isinstance(decision, Move)
    assert decision.outcome == "moved"
    assert (decision.record.topic, decision.record.key) == ("tweets-out", "17")
    assert TWEETS.decode(decision.record.value) == fresh
    assert from_headers(decision.record.headers) == Envelope(1, NOW)
    assert headers(decision.record)["redriven_from"] == b"tweets.dlq/0/5"


def test_an_ingest_line_that_still_fails_is_dead_lettered_anew_and_marked() -> None:
    line = b"not json"
    decision = decide(ingest_letter(line, "bad_json"), ALL, START, reingesting(PayloadError("bad_json", "Expecting")))
    assert isinstance(decision, Move)
    assert decision.outcome == "failed_again"
    again = decision.record
    assert (again.topic, again.value) == ("tweets.dlq", line)
    assert headers(again)["error"] == b"bad_json"
    assert headers(again)["stage"] == b"ingest"
    assert headers(again)["redriven_from"] == b"tweets.dlq/0/5"
    assert "source_topic" not in headers(again)


def test_an_ingest_line_now_read_as_a_post_without_images_is_left() -> None:
    assert decide(ingest_letter(b"{}"), ALL, START, reingesting(None)) == Leave("without_images")


# --- progress ---------------------------------------------------------------------------------


def test_a_run_over_every_reason_moves_the_base_and_drops_frontiers_behind_it() -> None:
    progress = Progress(10, {"timeout": 30, "http_503": 50})
    after = progress.settled(ALL, 40)
    assert after == Progress(40, {"http_503": 50})
    assert after.frontier("timeout") == 40
    assert after.frontier("anything") == 40


def test_a_filtered_run_keeps_the_base_and_moves_its_reasons_only() -> None:
    progress = Progress(10, {"timeout": 30})
    after = progress.settled(Selection(frozenset({"timeout", "bad_avro"})), 25)
    assert after == Progress(10, {"bad_avro": 25, "timeout": 30}), "a frontier never goes back"
    assert after.frontier("http_503") == 10


def test_a_run_starts_at_the_least_settled_of_its_reasons() -> None:
    progress = Progress(10, {"timeout": 30, "bad_avro": 20})
    assert progress.start(ALL) == 10
    assert progress.start(Selection(frozenset({"timeout", "bad_avro"}))) == 20
    assert progress.start(Selection(frozenset({"timeout", "http_404"}))) == 10


def test_progress_survives_its_commit_metadata() -> None:
    progress = Progress(10, {"timeout": 30, "http_503": 50})
    assert Progress.committed(10, progress.metadata(), earliest=0) == progress
    assert len(progress.metadata()) < 100


@pytest.mark.parametrize("metadata", [None, "", "not json", "[]", '{"v": 1, "frontiers": {"a": "x"}}'])
def test_unreadable_metadata_means_no_frontiers(metadata: str | None) -> None:
    assert Progress.committed(7, metadata, earliest=0) == Progress(7)


def test_nothing_committed_or_committed_before_retention_starts_at_the_earliest_offset() -> None:
    assert Progress.committed(-1, None, earliest=3) == Progress(3)
    assert Progress.committed(2, json.dumps({"v": 1, "frontiers": {"t": 9}}), earliest=5) == Progress(5, {"t": 9})


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW - 90 * 60_000),
        ("2h", NOW - 7_200_000),
        ("7d", NOW - 7 * 86_400_000),
        ("30s", NOW - 30_000),
        ("1700000000000", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
    ],
)
def test_since_reads_durations_times_and_epoch_milliseconds(text: str, expected: int) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h30", "-5m", "2023-13-01"])
def test_since_refuses_anything_else_clearly(text: str) -> None:
    with pytest.raises(ValueError, match="SINCE"):
        parse_since(text, NOW)


def test_reasons_are_reason_codes() -> None:
    assert parse_reasons([]) is None
    assert parse_reasons(["timeout,http_503", "bad_avro"]) == frozenset({"timeout", "http_503", "bad_avro"})
    with pytest.raises(ValueError, match="Timeout"):
        parse_reasons(["Timeout"])
    with pytest.raises(ValueError, match="reason codes"):
        parse_reasons(["a" * 65])
