import pytest

from services.ingest.payload import PayloadError, parse_line, priority_for, to_tweet_record

PRIORITIES = {"targeted": 2, "sample": 1}


def payload(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "data": {
            "id": "1600000000000000001",
            "text": "two pictures",
            "author_id": "42",
            "created_at": "2026-11-23T12:00:00.000Z",
            "lang": "en",
            "attachments": {"media_keys": ["3_1", "7_2", "16_3", "3_missing"]},
        },
        "includes": {
            "media": [
                {"media_key": "3_1", "type": "photo", "url": "https://pbs.twimg.com/media/a.jpg", "width": 800},
                {"media_key": "7_2", "type": "video", "preview_image_url": "https://pbs.twimg.com/v.jpg"},
                {"media_key": "16_3", "type": "animated_gif", "preview_image_url": "https://pbs.twimg.com/g.jpg"},
            ],
            "users": [{"id": "42", "username": "alice", "name": "Alice"}],
        },
        "matching_rules": [{"id": "11", "tag": "sample"}, {"id": "12", "tag": "targeted:cats"}],
    }
    base.update(overrides)
    return base


def record(p: dict[str, object]) -> dict[str, object] | None:
    return to_tweet_record(p, priorities=PRIORITIES, default_priority=0, ingest_ts_ms=5)


def test_a_post_with_images_becomes_one_record_with_every_image() -> None:
    r = record(payload())
    assert r is not None
    assert [m["url"] for m in r["media"]] == [  # type: ignore[attr-defined]
        "https://pbs.twimg.com/media/a.jpg",
        "https://pbs.twimg.com/v.jpg",
        "https://pbs.twimg.com/g.jpg",
    ]
    assert r["author_username"] == "alice"
    assert r["post_url"] == "https://x.com/alice/status/1600000000000000001"
    assert r["priority"] == 2
    assert r["ingest_ts_ms"] == 5


def test_a_post_without_media_gives_no_record() -> None:
    p = payload()
    del p["data"]["attachments"]  # type: ignore[attr-defined]
    assert record(p) is None


def test_media_of_other_types_or_without_url_are_not_images() -> None:
    p = payload(includes={"media": [{"media_key": "3_1", "type": "photo"}]})
    assert record(p) is None


def test_post_url_without_a_known_author() -> None:
    r = record(payload(includes={**payload()["includes"], "users": []}))  # type: ignore[dict-item]
    assert r is not None
    assert r["post_url"] == "https://x.com/i/web/status/1600000000000000001"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([{"tag": "targeted:cats"}], 2),
        ([{"tag": "sample"}], 1),
        ([{"tag": "sample"}, {"tag": "targeted:dogs"}], 2),
        ([{"tag": "unknown"}], 0),
        ([{"tag": None}], 0),
        ([], 0),
        ([{"tag": "vip"}], 9),  # a whole tag can be mapped too
    ],
)
def test_priority_is_the_highest_of_the_matching_rules(rules: list[dict[str, object]], expected: int) -> None:
    assert priority_for(rules, {**PRIORITIES, "vip": 9}, default=0) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [(b'{"data": ', "bad_json"), (b"[1, 2]", "bad_json")],
)
def test_unreadable_lines_are_refused_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_line(line)
    assert info.value.reason == reason


def test_keep_alives_are_not_payloads() -> None:
    assert parse_line(b"\r\n") is None


@pytest.mark.parametrize(
    ("p", "reason"),
    [
        ({"errors": [{"title": "operational-disconnect"}]}, "not_a_post"),
        ({"data": {"id": "12ab"}}, "bad_post"),
    ],
)
def test_payloads_that_are_not_posts(p: dict[str, object], reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        record(p)
    assert info.value.reason == reason
