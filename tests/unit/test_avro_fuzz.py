"""Fuzzing the Avro codecs and the stream loop's record processing with hostile records.

What is fed: records of every released version of every topic's schema, drawn from the schema,
then mutated (bit flips, truncations, overwritten and inserted bytes, Avro varints claiming
lengths and counts up to 2^62 spliced in); valid framing around a random body; wrong
fingerprints (random, or another topic's); records of another topic's versions; and bodies
crafted for the worst memory per byte, arrays of the smallest items. Through every codec in
`CODECS`, and through `Processor.outcome` as a stage runs it, with or without envelope headers.

Nothing may come out but a record of the reader's schema (fastavro's validation says so; it
encodes again, and has an envelope) or a refusal with a reason: `bad_avro` or `unknown_schema`,
as a dead letter in the stream loop, never `internal_error`. The peak RSS of each decode stays
within twice the record's size plus the items `MAX_ITEMS` allows (fastavro never allocates what
a length claims: it reads what is there, from a buffer that shares the record's bytes).

`make test` runs the `test` profile, `make fuzz` the `fuzz` one (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import fastavro
import fastavro.validation
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from services.common.admission import Admission
from services.common.avro import (
    CODECS,
    HEADER_LENGTH,
    MARKER,
    MAX_ITEMS,
    AvroDecodeError,
    Codec,
    Record,
)
from services.common.envelope import Envelope
from services.common.process import Output, Processor
from services.common.settings import StreamSettings
from tests.fakes.kafka import FakeMessage
from tests.unit.test_image_fuzz import PeakMemory, attempt

pytestmark = pytest.mark.fuzz

MIB = 1024 * 1024
REASONS = {"bad_avro", "unknown_schema"}
#: what the process does around a decode besides the values it makes (the interpreter, the
#: hypothesis machinery, fastavro's small buffers)
SLACK = 8 * MIB
#: the most memory one array or map item of these schemas takes once decoded (a dict of up to
#: five fields, its list slot, a float, short strings), with room to spare; measured near 250
ITEM_BYTES = 1024
CODEC_NAMES = [codec.name for codec in CODECS]
BY_NAME = {codec.name: codec for codec in CODECS}


# --- values drawn from a schema ---------------------------------------------------------------


def values(schema: Any) -> SearchStrategy[Any]:
    """Any value of a (parsed, fully inlined) Avro schema."""
    if isinstance(schema, list):
        return st.one_of([values(branch) for branch in schema])
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: values(f["type"]) for f in schema["fields"]})
    if kind == "array":
        return st.lists(values(schema["items"]), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), values(schema["values"]), max_size=4)
    primitives: dict[str, SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32),
        "double": st.floats(),
        "string": st.text(max_size=40),
        "bytes": st.binary(max_size=64),
    }
    return primitives[kind]


def varint(n: int) -> bytes:
    """Avro's zig-zag varint of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


ALL_VERSIONS = [(codec, version) for codec in CODECS for version in codec.versions]


@st.composite
def encoded(draw: st.DrawFn, codec: Codec) -> bytes:
    """A valid record of one of `codec`'s versions."""
    version = draw(st.sampled_from(codec.versions))
    return version.encode(draw(values(version.schema)))


HUGE = st.sampled_from([2**31 - 1, 2**31, 2**40, 2**62, -1, -(2**31), -(2**62)])


@st.composite
def mutated(draw: st.DrawFn, codec: Codec) -> bytes:
    data = bytearray(draw(encoded(codec)))
    for _ in range(draw(st.integers(1, 4))):
        if len(data) <= HEADER_LENGTH:
            break
        # mostly in the body: the header has its own cases below
        position = draw(st.integers(HEADER_LENGTH, len(data) - 1) | st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "varint"]))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(patch)] = patch
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:  # a length, a count or a union index claiming anything, where one is read or not
            data[position : position + draw(st.integers(0, 2))] = varint(draw(HUGE))
    return bytes(data)


@st.composite
def random_body(draw: st.DrawFn, codec: Codec) -> bytes:
    """The framing right, the body anything."""
    version = draw(st.sampled_from(codec.versions))
    return MARKER + version.fingerprint + draw(st.binary(max_size=256))


@st.composite
def wrong_fingerprint(draw: st.DrawFn, codec: Codec) -> bytes:
    data = draw(encoded(codec))
    fingerprint = draw(st.binary(min_size=8, max_size=8) | st.sampled_from([v.fingerprint for _, v in ALL_VERSIONS]))
    return data[:2] + fingerprint + data[HEADER_LENGTH:]


@st.composite
def another_topics_record(draw: st.DrawFn, codec: Codec) -> bytes:
    other = draw(st.sampled_from([c for c in CODECS if c is not codec]))
    return draw(encoded(other))


@st.composite
def broken_header(draw: st.DrawFn, codec: Codec) -> bytes:
    data = draw(encoded(codec))
    cut = draw(st.integers(0, HEADER_LENGTH))
    return draw(st.sampled_from([data[:cut], draw(st.binary(max_size=2)) + data[2:], b""]))


def smallest_items(schema: Any) -> Record | None:
    """A value of `schema` whose arrays and maps are empty, or None if it has none: the start of
    a record built for the most memory per byte."""
    if schema["type"] != "record":
        return None
    value: Record = {}
    found = False
    for f in schema["fields"]:
        kind = f["type"] if isinstance(f["type"], str) else f["type"]["type"] if isinstance(f["type"], dict) else None
        if kind in ("array", "map"):
            found = True
            value[f["name"]] = [] if kind == "array" else {}
        elif kind == "record":
            value[f["name"]] = smallest_items(f["type"]) or _defaults(f["type"])
        else:
            value[f["name"]] = _default(f["type"])
    return value if found else None


def _defaults(schema: Any) -> Record:
    return {f["name"]: _default(f["type"]) for f in schema["fields"]}


def _default(schema: Any) -> Any:
    if isinstance(schema, list):
        return None if "null" in schema else _default(schema[0])
    kind = schema if isinstance(schema, str) else schema["type"]
    return {"string": "", "bytes": b"", "int": 0, "long": 0, "float": 0.0, "double": 0.0, "boolean": False}.get(kind)


class Large(bytes):
    """A large value that says only its size and start when hypothesis prints a failing example."""

    def __repr__(self) -> str:
        return f"Large({len(self)} bytes: {bytes(self[:48])!r}...)"


@st.composite
def many_small_items(draw: st.DrawFn, codec: Codec) -> bytes:
    """A record whose arrays or maps hold up to fifty times `MAX_ITEMS` of their smallest items
    (2 to 5 bytes each, so 1 to 2.5 MB): the most objects fastavro would build per byte."""
    versions = [v for v in codec.versions if smallest_items(v.schema) is not None]
    if not versions:  # no arrays: the largest value is one long bytes or string field
        return MARKER + codec.fingerprint + draw(st.sampled_from([b"\x80\x80\x80\x01", b"\xfe\xff\xff\xff\x0f"]))
    version = draw(st.sampled_from(versions))
    record = smallest_items(version.schema)
    assert record is not None
    count = draw(st.sampled_from([MAX_ITEMS // 2, MAX_ITEMS, MAX_ITEMS + 1, 50 * MAX_ITEMS]))
    field_ = draw(
        st.sampled_from([f for f in version.schema["fields"] if f["name"] in record and record[f["name"]] in ([], {})])
    )
    kind = field_["type"]["type"]
    if kind == "array":
        record[field_["name"]] = [_smallest(field_["type"]["items"])] * count
    else:
        record[field_["name"]] = {str(i): _default(field_["type"]["values"]) for i in range(count)}
    return Large(version.encode(record))


def _smallest(schema: Any) -> Any:
    return _defaults(schema) if isinstance(schema, dict) and schema["type"] == "record" else _default(schema)


@st.composite
def hostile(draw: st.DrawFn, codec: Codec) -> bytes:
    data: bytes = draw(
        st.one_of(
            mutated(codec),
            mutated(codec),  # the richest source: twice the share
            random_body(codec),
            wrong_fingerprint(codec),
            another_topics_record(codec),
            broken_header(codec),
            encoded(codec),
            many_small_items(codec),
        )
    )
    return data


# --- what may come out --------------------------------------------------------------------------


def check_decode(codec: Codec, data: bytes) -> Record | None:
    """The record `data` decodes to, or None after checking the refusal says why."""
    outcome = attempt(lambda: codec.decode(data), AvroDecodeError)
    if isinstance(outcome, AvroDecodeError):
        assert outcome.reason in REASONS, outcome
        assert outcome.detail, outcome
        return None
    record = outcome
    # What decodes is a record of the reader's schema, and a stage can carry it forward.
    assert fastavro.validation.validate(record, codec.schema, raise_errors=True)
    assert codec.decode(codec.encode(record)) == record or _has_nan(record)
    assert isinstance(codec.envelope(record), Envelope)
    return record


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return value != value
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


@pytest.mark.parametrize("name", CODEC_NAMES)
@given(data=st.data())
def test_a_codec_decodes_a_record_or_refuses_with_a_reason(name: str, data: st.DataObject) -> None:
    codec = BY_NAME[name]
    value = data.draw(hostile(codec))
    with PeakMemory() as memory:
        try:
            decoded: Record | None = codec.decode(value)
        except AvroDecodeError:
            decoded = None
    bound = SLACK + 2 * len(value) + MAX_ITEMS * ITEM_BYTES
    assert memory.added <= bound, f"{memory.added / MIB:.1f} MiB for {len(value)} bytes"
    del decoded
    check_decode(codec, value)


# --- the stream loop's record processing ------------------------------------------------------

IN, OUT, STAGE = "in", "out", "fuzz"


def processor(codec: Codec) -> Processor:
    settings = StreamSettings(input_topic=IN, group_id="g", output_topic=OUT, shedding_enabled=False)

    async def handle(record: Record) -> Sequence[Output]:
        # A stage carries what it read forward: the record must encode again.
        return [Output(OUT, codec.encode(record))]

    return Processor(STAGE, settings, codec, handle, Admission(STAGE, settings))


HEADERS: SearchStrategy[list[tuple[str, bytes]] | None] = st.one_of(
    st.none(),
    st.just([]),
    st.builds(lambda p, t: Envelope(p, t).headers(), st.integers(-5, 5), st.integers(0, 2**42)),
    st.lists(st.tuples(st.sampled_from(["priority", "ingest_ts_ms", "other"]), st.binary(max_size=24)), max_size=4),
)


@pytest.mark.parametrize("name", CODEC_NAMES)
@given(data=st.data())
def test_the_stream_loop_dead_letters_with_a_reason_what_it_cannot_read(name: str, data: st.DataObject) -> None:
    codec = BY_NAME[name]
    value = data.draw(hostile(codec))
    headers = data.draw(HEADERS)
    message = FakeMessage(IN, 0, 7, value, b"k", headers)

    outcome = asyncio.run(processor(codec).outcome(message))  # type: ignore[arg-type]

    readable = check_decode(codec, value) is not None
    if readable:
        assert [r.topic for r in outcome.records] == [OUT]
        assert codec.decode(outcome.records[0].value) is not None
        return
    (letter,) = outcome.records
    written = dict(letter.headers)
    assert letter.topic == IN + ".dlq"
    assert letter.value == value
    assert written["error"].decode() in REASONS, written
    assert written["error_detail"]
    assert written["source_offset"] == b"7"


# --- what the fuzzing found, kept as plain cases ----------------------------------------------


def rules(count: int) -> bytes:
    """A `tweets` record of `count` matching rules of 2 bytes each: before the cap, 104 MiB of
    Python objects for 1 MiB of record."""
    record = smallest_items(BY_NAME["tweets"].schema)
    assert record is not None
    return BY_NAME["tweets"].current.encode({**record, "matching_rules": [{"id": "", "tag": None}] * count})


def test_a_record_of_too_many_items_is_refused_before_it_takes_memory() -> None:
    tweets = BY_NAME["tweets"]
    data = rules(50 * MAX_ITEMS)
    with PeakMemory() as memory:
        outcome = attempt(lambda: tweets.decode(data), AvroDecodeError)
    assert isinstance(outcome, AvroDecodeError)
    assert f"more than {MAX_ITEMS} array and map items" in outcome.detail
    assert memory.added <= SLACK + 2 * len(data), f"{memory.added / MIB:.1f} MiB for {len(data)} bytes"
    assert len(tweets.decode(rules(MAX_ITEMS))["matching_rules"]) == MAX_ITEMS


def test_an_int_outside_32_bits_is_refused() -> None:
    images = BY_NAME["images"]
    v1 = images.versions[0]
    record = {f["name"]: _default(f["type"]) for f in v1.schema["fields"]}
    assert images.decode(v1.encode({**record, "priority": 2**31 - 1}))["origin"]["priority"] == 2**31 - 1
    outcome = attempt(lambda: images.decode(v1.encode({**record, "priority": 2**31})), AvroDecodeError)
    assert isinstance(outcome, AvroDecodeError)
    assert "an int outside 32 bits" in outcome.detail


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b"\x00", "1 bytes after the record"),
        (b"", None),
    ],
)
def test_bytes_after_the_record_are_refused(tail: bytes, why: str | None) -> None:
    tweets = BY_NAME["tweets"]
    data = rules(1) + tail
    outcome = attempt(lambda: tweets.decode(data), AvroDecodeError)
    if why is None:
        assert not isinstance(outcome, AvroDecodeError)
    else:
        assert isinstance(outcome, AvroDecodeError)
        assert why in outcome.detail


def test_a_number_longer_than_ten_bytes_is_refused() -> None:
    tweets = BY_NAME["tweets"]
    # tweet_id's length: 0, written in 11 bytes (continuation bits on zeros)
    data = MARKER + tweets.fingerprint + b"\x80" * 10 + b"\x00" + rules(0)[HEADER_LENGTH + 1 :]
    outcome = attempt(lambda: tweets.decode(data), AvroDecodeError)
    assert isinstance(outcome, AvroDecodeError)
    assert "longer than 10 bytes" in outcome.detail
