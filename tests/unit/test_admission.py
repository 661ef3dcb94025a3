from services.common.admission import Admission, Reading, partition_lag
from services.common.deadletters import Source
from services.common.envelope import Envelope, from_headers
from services.common.settings import StreamSettings
from services.common.shedding import Lag, ShedLevel


def settings(**overrides: object) -> StreamSettings:
    base: dict[str, object] = {
        "input_topic": "in",
        "group_id": "g",
        "shed_levels": [ShedLevel(min_priority=1, lag_records=100, lag_seconds=10)],
        "shed_min_dwell_s": 0,
    }
    return StreamSettings(**(base | overrides))  # type: ignore[arg-type]


def test_partition_lag_counts_records_behind_and_seconds_since_the_newest_read() -> None:
    assert partition_lag(Reading(("in", 0), 9, 1_000_000, 10), now_s=1_003.5) == Lag(0, 3.5)
    assert partition_lag(Reading(("in", 0), 9, 1_000_000, 510), now_s=999) == Lag(500, 0.0)
    assert partition_lag(Reading(("in", 0), 9, 1_000_000, -1001), now_s=1_000) == Lag(0, 0.0)


def test_lag_over_the_threshold_sheds_the_low_priorities_and_an_empty_fetch_clears_it() -> None:
    admission = Admission("admission-test", settings())
    assert admission.admits(Envelope(0, 0))
    now = 2_000.0
    admission.observe([Reading(("in", 0), 0, int(now * 1000), 80), Reading(("in", 1), 0, int(now * 1000), 30)], now)
    assert admission.own_lag() == Lag(108, 0.0)
    assert not admission.admits(Envelope(0, 0))
    assert admission.admits(Envelope(1, 0))
    admission.observe([], now)  # caught up: calm from now on ...
    assert admission.own_lag() == Lag(0, 0.0)
    admission.observe([], now)  # ... and calm for the dwell time (0 here): the level is left
    assert admission.admits(Envelope(0, 0))


def test_a_revoked_partition_no_longer_counts() -> None:
    admission = Admission("admission-test", settings())
    admission.observe([Reading(("in", 0), 0, 0, 500)], 0.0)
    admission.forget([("in", 0)])
    assert admission.own_lag() == Lag(0, 0.0)


def test_shed_copy_says_why_and_where_and_keeps_the_envelope() -> None:
    admission = Admission("admission-test", settings())
    admission.observe([Reading(("in", 0), 0, 0, 500)], 0.0)
    copy = admission.shed(value=b"v", key="k", envelope=Envelope(0, 7), source=Source("in", 0, 3), decoded=False)
    assert copy is not None
    assert (copy.topic, copy.value, copy.key) == ("in.shed", b"v", "k")
    headers = dict(copy.headers)
    assert headers["reason"] == b"shed"
    assert headers["min_priority"] == b"1"
    assert headers["lag_records"] == b"499"
    assert headers["source_offset"] == b"3"
    assert from_headers(copy.headers) == Envelope(0, 7)


def test_without_the_audit_shedding_writes_nothing() -> None:
    admission = Admission("admission-test", settings(shed_audit=False))
    assert (
        admission.shed(value=b"v", key=None, envelope=Envelope(0, 0), source=Source("in", 0, 0), decoded=True) is None
    )


def test_shedding_off_admits_everything() -> None:
    admission = Admission("admission-test", settings(shedding_enabled=False))
    admission.observe([Reading(("in", 0), 0, 0, 10**9)], 10**6)
    assert admission.admits(Envelope(-5, 0))
