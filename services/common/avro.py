"""Avro single-object encoding of the topic records, so a reader needs only the `.avsc` files.

Framing (Avro spec, "Single object encoding"): the two marker bytes C3 01, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then
the binary-encoded body.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro
import fastavro.schema

MARKER = b"\xc3\x01"
HEADER_LENGTH = len(MARKER) + 8


class AvroDecodeError(ValueError):
    """The bytes are not a single-object-encoded record of the expected schema."""


@dataclass(frozen=True)
class Codec:
    """Encoder and decoder for one record schema."""

    name: str
    schema: Any  # fastavro's parsed schema
    fingerprint: bytes

    def encode(self, record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(self.fingerprint)
        fastavro.schemaless_writer(buffer, self.schema, record)
        return buffer.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None or len(data) < HEADER_LENGTH:
            raise AvroDecodeError("record shorter than the single-object header")
        if data[:2] != MARKER:
            raise AvroDecodeError("missing the single-object marker C3 01")
        if data[2:HEADER_LENGTH] != self.fingerprint:
            raise AvroDecodeError(
                f"writer schema fingerprint {data[2:HEADER_LENGTH].hex()} is not {self.name}'s {self.fingerprint.hex()}"
            )
        body = io.BytesIO(data)  # shares the bytes: no copy of a large body
        body.seek(HEADER_LENGTH)
        try:
            record = fastavro.schemaless_reader(body, self.schema, None)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise AvroDecodeError(f"malformed {self.name} body: {exc}") from exc
        if not isinstance(record, dict):
            raise AvroDecodeError(f"{self.name} body is not a record")
        return record


def fingerprint64(schema: Any) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, as the 8 little-endian bytes the framing uses."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro returns the fingerprint's bytes in little-endian order, hex-encoded.
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def load_codec(name: str) -> Codec:
    """The codec for `schemas/<name>.avsc` shipped with this package."""
    text = resources.files(__package__).joinpath("schemas", f"{name}.avsc").read_text()
    raw = json.loads(text)
    schema = fastavro.parse_schema(raw)
    return Codec(name=name, schema=schema, fingerprint=fingerprint64(raw))


TWEETS = load_codec("tweets")
IMAGES = load_codec("images")
PREDICTIONS = load_codec("predictions")
