"""Every released schema version stays readable; a new version must read every earlier one.

Order of a rolling upgrade: readers first. A reader that does not know a writer's version
dead-letters its records as `unknown_schema` (last test).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import fastavro.utils
import pytest

from services.common.avro import (
    CODECS,
    IMAGES,
    PREDICTIONS,
    SCHEMAS,
    TWEETS,
    AvroDecodeError,
    Codec,
    UnknownSchemaError,
    load_codec,
)
from services.common.envelope import Envelope

GOLDEN = Path(__file__).parent / "golden"
SEED = 20261201

#: every released version's fingerprint: a released schema file is never edited (nor, through
#: it, a named type it uses), or records already written would no longer be readable
RELEASED = {
    ("tweets", 1): "138d1f27d2844a4a",
    ("images", 1): "e45fa8f7cefd6436",
    ("images", 2): "01e823c1f3df6c1b",
    ("predictions", 1): "e3ab2740e39d4392",
    ("predictions", 2): "39e7a091663c8b49",
    ("predictions", 3): "42d8878407999516",
}


def test_released_versions_are_all_there_and_unchanged() -> None:
    found = {(codec.name, v.version): v.fingerprint.hex() for codec in CODECS for v in codec.versions}
    assert found == RELEASED


def test_every_version_is_parsed_once_when_loaded() -> None:
    # fastavro parses a schema it is given unparsed again on every read and write: the marker
    # it leaves on a parsed one is what spares a 150 KB image record that cost.
    unparsed = [f"{c.name} v{v.version}" for c in CODECS for v in c.versions if "__fastavro_parsed" not in v.schema]
    assert unparsed == []


def test_records_written_with_the_first_schemas_are_read_by_this_code() -> None:
    """tests/unit/golden/*.v1.avro were written by the code of version 1, before `origin`."""
    tweet = TWEETS.decode((GOLDEN / "tweets.v1.avro").read_bytes())
    assert tweet["tweet_id"] == "1790000000000000001"
    assert tweet["media"][0]["url"] == "https://pbs.twimg.com/media/AbC.jpg"
    image = IMAGES.decode((GOLDEN / "images.v1.avro").read_bytes())
    assert image["origin"]["media_key"] == "3_1"
    assert image["origin"]["text"] == "a red fox 🦊 #animals"
    assert image["pixels"] == bytes(range(12))
    prediction = PREDICTIONS.decode((GOLDEN / "predictions.v1.avro").read_bytes())
    assert prediction["origin"]["author_username"] is None
    assert prediction["hashtags"] == [{"hashtag": "cats", "score": 0.75}]
    for codec, record in ((TWEETS, tweet), (IMAGES, image), (PREDICTIONS, prediction)):
        assert codec.envelope(record) == Envelope(2, 1_796_040_000_000)
        assert codec.decode(codec.encode(record)) == record


def assert_reads_every_version(codec: Codec, samples: int = 25) -> None:
    """Records of every version, drawn at random from the schema, decode with `codec`."""
    random.seed(SEED)
    for version in codec.versions:
        for record in fastavro.utils.generate_many(version.schema, samples):
            decoded = codec.decode(version.encode(record))
            codec.envelope(decoded)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_the_newest_version_reads_every_earlier_one(codec: Codec) -> None:
    assert_reads_every_version(codec)


def _with_version(tmp_path: Path, name: str, added_field: Mapping[str, object]) -> Path:
    """A copy of the schemas with a next version of `name` that adds `added_field`."""
    directory = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, directory)
    latest = max(directory.glob(f"{name}.v*.avsc"), key=lambda p: int(p.stem.split(".v")[1]))
    schema = json.loads(latest.read_text())
    schema["fields"].append(added_field)
    number = int(latest.stem.split(".v")[1]) + 1
    (directory / f"{name}.v{number}.avsc").write_text(json.dumps(schema))
    return directory


def test_a_version_that_adds_an_optional_field_is_read_by_code_that_knows_both(tmp_path: Path) -> None:
    blur = {"name": "blur_score", "type": ["null", "float"], "default": None}
    upgrade = IMAGES.versions[1].upgrade
    assert upgrade is not None
    newer = load_codec("images", ("origin",), {2: upgrade}, _with_version(tmp_path, "images", blur))
    assert [v.version for v in newer.versions] == [1, 2, 3]
    v2_record = IMAGES.decode((GOLDEN / "images.v1.avro").read_bytes())
    from_v2 = newer.decode(IMAGES.encode(v2_record))
    assert from_v2 == v2_record | {"blur_score": None}
    from_v1 = newer.decode((GOLDEN / "images.v1.avro").read_bytes())
    assert from_v1 == from_v2
    v3_record = from_v2 | {"blur_score": 0.25}
    assert newer.decode(newer.encode(v3_record)) == v3_record
    assert_reads_every_version(newer)
    # The older reader cannot read the new version: the reason it gives is its own.
    with pytest.raises(UnknownSchemaError) as refused:
        IMAGES.decode(newer.encode(v3_record))
    assert refused.value.reason == "unknown_schema"


def test_the_compatibility_check_fails_for_a_version_that_cannot_read_an_earlier_one(tmp_path: Path) -> None:
    required = {"name": "camera", "type": "string"}  # no default: earlier records have no value for it
    broken = load_codec("tweets", directory=_with_version(tmp_path, "tweets", required))
    with pytest.raises(AvroDecodeError):
        assert_reads_every_version(broken)


def test_garbage_is_bad_avro_not_unknown_schema() -> None:
    for data in (b"", b"\xc3", b"\x00\x01" + TWEETS.fingerprint, b"\xc3\x01" + TWEETS.fingerprint + b"\x06abc"):
        with pytest.raises(AvroDecodeError) as refused:
            TWEETS.decode(data)
        assert refused.value.reason == "bad_avro"
