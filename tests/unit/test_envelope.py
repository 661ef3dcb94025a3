import pytest

from services.common.envelope import Envelope, from_headers


def test_round_trip_through_headers() -> None:
    envelope = Envelope(2, 1_700_000_000_123)
    assert envelope.headers() == [("priority", b"2"), ("ingest_ts_ms", b"1700000000123")]
    assert from_headers([("other", b"x"), *envelope.headers()]) == envelope
    assert from_headers([("priority", "-1"), ("ingest_ts_ms", "5")]) == Envelope(-1, 5)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("priority", b"2")],
        [("ingest_ts_ms", b"5")],
        [("priority", b"two"), ("ingest_ts_ms", b"5")],
        [("priority", b"+2"), ("ingest_ts_ms", b"5")],
        [("priority", b" 2"), ("ingest_ts_ms", b"5")],
        [("priority", b"2"), ("ingest_ts_ms", None)],
        [("priority", "\u0662"), ("ingest_ts_ms", b"5")],  # an Arabic-Indic two: int() would take it
        [("priority", b"1" * 40), ("ingest_ts_ms", b"5")],
    ],
)
def test_anything_but_two_decimal_headers_means_no_envelope(headers: list[tuple[str, bytes | None]] | None) -> None:
    assert from_headers(headers) is None
