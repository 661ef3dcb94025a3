from services.common import metrics
from services.common.deadletters import TRUNCATED_BYTES, Source, dead_letter, truncated
from services.common.envelope import Envelope


def test_a_dead_letter_is_the_input_with_why_and_where_in_its_headers() -> None:
    before = metrics.DEAD_LETTERS.labels("dl-test", "broken")._value.get()
    letter = dead_letter(
        stage="dl-test",
        topic="in.dlq",
        value=b"input",
        key="k",
        reason="broken",
        detail="d" * 5000,
        envelope=Envelope(1, 2),
        source=Source("in", 2, 7),
        extra=[("media_key", "3_1")],
    )
    assert (letter.topic, letter.value, letter.key) == ("in.dlq", b"input", "k")
    headers = dict(letter.headers)
    assert headers["error"] == b"broken"
    assert len(headers["error_detail"]) == 2000
    assert headers["stage"] == b"dl-test"
    assert (headers["priority"], headers["ingest_ts_ms"]) == (b"1", b"2")
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == (b"in", b"2", b"7")
    assert headers["media_key"] == b"3_1"
    assert metrics.DEAD_LETTERS.labels("dl-test", "broken")._value.get() == before + 1


def test_a_dead_letter_from_outside_kafka_has_no_source() -> None:
    letter = dead_letter(stage="dl-test", topic="tweets.dlq", value=b"line", key=None, reason="bad_json")
    names = [name for name, _ in letter.headers]
    assert names == ["error", "error_detail", "stage"]


def test_truncated_keeps_a_prefix_and_says_how_long_it_was() -> None:
    letter = dead_letter(stage="dl-test", topic="t.dlq", value=b"x" * (TRUNCATED_BYTES * 3), key=None, reason="r")
    cut = truncated(letter, "too large")
    assert cut.value == b"x" * TRUNCATED_BYTES
    assert dict(cut.headers)["value_truncated"] == f"{TRUNCATED_BYTES * 3} bytes: too large".encode()
