"""Avro single-object encoding of the topic records, with every released schema version readable.

Framing (Avro spec, "Single object encoding"): the two marker bytes C3 01, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then
the binary-encoded body.

Each topic's schema lives in `schemas/<name>.v<N>.avsc`, one file per released version,
never edited once released (tests/unit/test_schema_evolution.py pins their fingerprints).
Named types shared between schemas (`tagstream.Origin`) live in `schemas/<namespace>.<name>.avsc`,
where fastavro's `load_schema` finds them. A reader finds the writer's version by the
fingerprint and reads with the newest version it knows:
- Avro schema resolution covers what Avro allows (an added field with a default, a removed
  field, a promoted type): the body is read once, with the writer schema and the newest as
  reader;
- a change resolution cannot express (fields moved into a nested record) comes with an
  `upgrade` function from the previous version's shape, in `_UPGRADES` below.
So readers are upgraded before writers: a writer's new version is unknown to an older reader,
which dead-letters it as `unknown_schema`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import fastavro.read
import fastavro.schema

from .envelope import Envelope
from .errors import RecordError

MARKER = b"\xc3\x01"
HEADER_LENGTH = len(MARKER) + 8
#: array and map items one record may hold, all together. fastavro builds a Python object per
#: item, and an item can take 2 bytes on the wire: without a cap a 1 MiB record decoded to
#: 104 MiB. The records of this pipeline hold tens (media, matching rules, one score per label).
MAX_ITEMS = 10_000
SCHEMAS = Path(str(resources.files(__package__).joinpath("schemas")))

Record = dict[str, Any]
Upgrade = Callable[[Record], Record]


class AvroDecodeError(RecordError):
    """The bytes are not a single-object-encoded record of the expected schema."""

    def __init__(self, detail: str, reason: str = "bad_avro") -> None:
        super().__init__(reason, detail)


class MalformedBody(ValueError):
    """What `body_check` finds wrong with a body, before fastavro reads it."""


class UnknownSchemaError(AvroDecodeError):
    """Framed correctly, but written with a schema version this reader does not know (yet)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="unknown_schema")


@dataclass(frozen=True)
class SchemaVersion:
    version: int
    schema: Any  # fastavro's parsed schema
    fingerprint: bytes
    #: from the previous version's shape to this one's, when Avro resolution cannot do it
    upgrade: Upgrade | None = None

    def encode(self, record: Record) -> bytes:
        """`record` as a writer of this version writes it."""
        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(self.fingerprint)
        fastavro.schemaless_writer(buffer, self.schema, record)
        return buffer.getvalue()


@dataclass(frozen=True)
class Codec:
    """Encoder (newest version) and decoder (every released version) for one topic's records."""

    name: str
    versions: tuple[SchemaVersion, ...]  # oldest first
    #: where the record holds its envelope (priority, ingest time): the keys leading to it
    envelope_at: tuple[str, ...] = ()
    _by_fingerprint: dict[bytes, int] = field(init=False, repr=False, compare=False)
    _checks: tuple[Callable[[bytes, int], None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_fingerprint", {v.fingerprint: i for i, v in enumerate(self.versions)})
        object.__setattr__(self, "_checks", tuple(body_check(v.schema) for v in self.versions))

    @property
    def current(self) -> SchemaVersion:
        return self.versions[-1]

    @property
    def fingerprint(self) -> bytes:
        return self.current.fingerprint

    @property
    def schema(self) -> Any:
        return self.current.schema

    def encode(self, record: Record) -> bytes:
        return self.current.encode(record)

    def decode(self, data: bytes | None) -> Record:
        """The record in the newest version's shape, whichever released version wrote it."""
        index = self._writer_index(data)
        assert data is not None
        body = io.BytesIO(data)  # shares the bytes: no copy of a large body
        body.seek(HEADER_LENGTH)
        try:
            # fastavro trusts what it reads: it makes an object per array item, whatever their
            # number, and reads Avro's 32-bit ints as longs. The body is checked first.
            self._checks[index](data, HEADER_LENGTH)
            return self._read(body, index)
        except MalformedBody as exc:
            raise AvroDecodeError(f"malformed {self.name} body: {exc}") from None
        except fastavro.read.SchemaResolutionError as exc:  # a released version this one cannot read
            raise AvroDecodeError(f"{self.name} v{self.versions[index].version} is not readable: {exc}") from exc
        except (EOFError, ValueError, IndexError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise AvroDecodeError(f"malformed {self.name} body: {type(exc).__name__}: {exc}") from exc

    def envelope(self, record: Record) -> Envelope:
        """The priority and ingest time a decoded record carries (for records without the headers)."""
        holder = record
        for key in self.envelope_at:
            holder = holder[key]
        return Envelope(int(holder["priority"]), int(holder["ingest_ts_ms"]))

    def _writer_index(self, data: bytes | None) -> int:
        if data is None or len(data) < HEADER_LENGTH:
            raise AvroDecodeError("record shorter than the single-object header")
        if data[:2] != MARKER:
            raise AvroDecodeError("missing the single-object marker C3 01")
        index = self._by_fingerprint.get(data[2:HEADER_LENGTH])
        if index is None:
            known = ", ".join(f"v{v.version} {v.fingerprint.hex()}" for v in self.versions)
            raise UnknownSchemaError(
                f"writer schema fingerprint {data[2:HEADER_LENGTH].hex()} is none of {self.name}'s ({known})"
            )
        return index

    def _read(self, body: io.BytesIO, index: int) -> Record:
        """Read with the writer's version, resolving up to the next structural change, upgrade
        across it, and so on to the newest. Only records older than a structural change pay
        for re-encoding, and only while a rolling upgrade lasts."""
        writer = self.versions[index]
        while True:
            step = next((i for i in range(index + 1, len(self.versions)) if self.versions[i].upgrade), None)
            reader = self.versions[-1 if step is None else step - 1]
            record = fastavro.schemaless_reader(body, writer.schema, None if reader is writer else reader.schema)
            if not isinstance(record, dict):
                raise AvroDecodeError(f"{self.name} body is not a record")
            if step is None:
                return record
            upgraded = self.versions[step]
            upgrade = upgraded.upgrade
            assert upgrade is not None
            body = io.BytesIO(upgraded.encode(upgrade(record))[HEADER_LENGTH:])
            writer, index = upgraded, step


Check = Callable[["_Cursor"], None]


def body_check(schema: Any) -> Callable[[bytes, int], None]:
    """A check that refuses (MalformedBody) a body that is not exactly one value of `schema`, or
    that holds more than `MAX_ITEMS` array and map items, by reading its structure without
    building any value. Also refused, though fastavro would read them: an `int` outside 32 bits, a
    number over 64 bits or 10 bytes, bytes after the value. UTF-8 is left to fastavro."""
    check = _compile(schema, {})

    def run(data: bytes, start: int) -> None:
        cursor = _Cursor(data, start)
        check(cursor)
        if cursor.pos != len(data):
            raise MalformedBody(f"{len(data) - cursor.pos} bytes after the record")

    return run


class _Cursor:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos, self.items = data, pos, 0

    def long(self) -> int:
        result = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise MalformedBody("the body ends inside a number")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if result >> 64:
                    raise MalformedBody("a number over 64 bits")
                return (result >> 1) ^ -(result & 1)
            shift += 7
            if shift > 63:
                raise MalformedBody("a number longer than 10 bytes")

    def skip(self, length: int) -> None:
        if not 0 <= length <= len(self.data) - self.pos:
            raise MalformedBody(f"a length of {length} with {len(self.data) - self.pos} bytes left")
        self.pos += length

    def sized(self) -> None:
        self.skip(self.long())

    def int64(self) -> None:
        self.long()

    def int32(self) -> None:
        if not -(2**31) <= self.long() < 2**31:
            raise MalformedBody("an int outside 32 bits")

    def count(self, items: int) -> None:
        self.items += items
        if self.items > MAX_ITEMS:
            raise MalformedBody(f"more than {MAX_ITEMS} array and map items")


_FIXED_WIDTH: Mapping[str, int] = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def _compile(schema: Any, named: dict[str, Check]) -> Check:
    """The check of one (parsed) schema, made once per schema version: closures, not a walk of
    the schema per record, which took as long as the decode itself."""
    if isinstance(schema, list):
        branches = [_compile(branch, named) for branch in schema]

        def union(cursor: _Cursor) -> None:
            index = cursor.long()
            if not 0 <= index < len(branches):
                raise MalformedBody(f"union branch {index} of {len(branches)}")
            branches[index](cursor)

        return union
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, dict | list):  # {"type": <a schema>}
        return _compile(kind, named)
    if kind in named:  # a named type met before
        return lambda cursor: named[kind](cursor)
    if kind in _FIXED_WIDTH or kind == "fixed":
        width = _FIXED_WIDTH[kind] if kind in _FIXED_WIDTH else schema["size"]
        return lambda cursor: cursor.skip(width)
    simple: dict[str, Check] = {"int": _Cursor.int32, "long": _Cursor.int64, "enum": _Cursor.int64}
    simple |= {"string": _Cursor.sized, "bytes": _Cursor.sized}
    if kind in simple:
        return simple[kind]
    if kind == "record":
        fields: list[Check] = []

        def record(cursor: _Cursor) -> None:
            for check in fields:
                check(cursor)

        named[schema["name"]] = record  # before its fields, which may name it
        fields.extend(_compile(f["type"], named) for f in schema["fields"])
        return record
    if kind in ("array", "map"):
        keyed = kind == "map"
        item = _compile(schema["values"] if keyed else schema["items"], named)

        def blocks(cursor: _Cursor) -> None:
            while count := cursor.long():
                if count < 0:  # a negative count is followed by the block's size in bytes
                    count = -count
                    cursor.long()
                cursor.count(count)
                for _ in range(count):
                    if keyed:
                        cursor.sized()
                    item(cursor)

        return blocks
    raise ValueError(f"no check for Avro type {kind!r}")


def fingerprint64(schema: Any) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, as the 8 little-endian bytes the framing uses."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro returns the fingerprint's bytes in little-endian order, hex-encoded.
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def load_codec(
    name: str,
    envelope_at: tuple[str, ...] = (),
    upgrades: Mapping[int, Upgrade] | None = None,
    directory: Path = SCHEMAS,
) -> Codec:
    """The codec for every `<directory>/<name>.v<N>.avsc`; `upgrades[N]` turns a version N-1
    record into a version N one where resolution cannot."""
    pattern = re.compile(rf"{re.escape(name)}\.v(\d+)\.avsc")
    found = sorted(
        (int(match.group(1)), path) for path in directory.iterdir() if (match := pattern.fullmatch(path.name))
    )
    if not found:
        raise FileNotFoundError(f"no {name}.v<N>.avsc in {directory}")
    numbers = [number for number, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise ValueError(f"{name}: versions {numbers} are not 1..{len(found)}")
    upgrades = upgrades or {}
    versions = []
    for number, path in found:
        # Kept as fastavro parses it: given an unparsed schema, it parses it again on every read
        # and write (twice the CPU of a 150 KB image record's decode).
        schema = fastavro.schema.load_schema(str(path))
        versions.append(SchemaVersion(number, schema, fingerprint64(schema), upgrades.get(number)))
    return Codec(name, tuple(versions), envelope_at)


#: the fields of `tagstream.Origin`, which version 1 of `images` and `predictions` held flat
ORIGIN_FIELDS = (
    "tweet_id",
    "media_key",
    "image_url",
    "post_url",
    "text",
    "author_username",
    "priority",
    "ingest_ts_ms",
)


def nest_origin(record: Record) -> Record:
    """Version 1 (flat) to version 2 (`origin` nested) of `images` and `predictions`."""
    rest = {key: value for key, value in record.items() if key not in ORIGIN_FIELDS}
    return {"origin": {key: record[key] for key in ORIGIN_FIELDS}, **rest}


TWEETS = load_codec("tweets")
IMAGES = load_codec("images", envelope_at=("origin",), upgrades={2: nest_origin})
PREDICTIONS = load_codec("predictions", envelope_at=("origin",), upgrades={2: nest_origin})
CODECS = (TWEETS, IMAGES, PREDICTIONS)
