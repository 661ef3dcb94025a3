import pytest

from services.common.avro import IMAGES, PREDICTIONS, TWEETS, AvroDecodeError, fingerprint64


def tweet() -> dict[str, object]:
    return {
        "tweet_id": "123",
        "text": "hello #cats",
        "author_id": "9",
        "author_username": "someone",
        "created_at": None,
        "lang": "en",
        "post_url": "https://x.com/someone/status/123",
        "media": [{"media_key": "3_1", "type": "photo", "url": "https://pbs.example/a.jpg", "width": 10, "height": 5}],
        "matching_rules": [{"id": "1", "tag": "targeted:cats"}],
        "priority": 2,
        "ingest_ts_ms": 1_700_000_000_000,
    }


def test_fingerprint_matches_the_avro_specification_vectors() -> None:
    # Avro's own test vectors (share/test/data/schema-tests.txt) give the 64-bit Rabin
    # fingerprint as a signed long; the framing writes it little-endian.
    assert int.from_bytes(fingerprint64("null"), "little", signed=True) == 7195948357588979594
    assert int.from_bytes(fingerprint64("int"), "little", signed=True) == 8247732601305521295


def test_round_trip_and_single_object_framing() -> None:
    data = TWEETS.encode(tweet())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == TWEETS.fingerprint
    assert TWEETS.decode(data) == tweet()


def test_each_schema_has_its_own_fingerprint() -> None:
    assert len({TWEETS.fingerprint, IMAGES.fingerprint, PREDICTIONS.fingerprint}) == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "shorter"),
        (b"\xc3", "shorter"),
        (b'{"tweet_id": "1"}', "marker"),
        (b"\xc3\x01" + IMAGES.fingerprint + b"\x00", "fingerprint"),
        (b"\xc3\x01" + TWEETS.fingerprint + b"\x06abc", "malformed"),
    ],
)
def test_decode_refuses_what_is_not_a_record_of_its_schema(data: bytes | None, message: str) -> None:
    with pytest.raises(AvroDecodeError, match=message):
        TWEETS.decode(data)
