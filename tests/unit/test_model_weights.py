"""Whether the served model's weights mean anything, from the export to the stored row.

The export writes it into each form's Triton config (`weights_meaningful`), the classifier
reads it from there and carries it in every prediction (`predictions.v3`), the sink stores it
per row. The path through a real Triton, classifier, sink and browser:
tests/integration/test_model_notice.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.classifier.triton import declared_meaningful
from services.common.avro import PREDICTIONS, UnknownSchemaError, load_codec, nest_origin
from services.sink.handler import flatten
from services.sink.sqlite_store import SqliteStore
from tests.sink.records import prediction
from tools.model import export

from .test_store import version_one_file

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"


def nested(**overrides: object) -> dict[str, object]:
    return nest_origin(prediction(**overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize("declared", [True, False, None])
def test_a_prediction_carries_what_its_model_declared(declared: bool | None) -> None:
    record = nested(model_weights_meaningful=declared)
    assert PREDICTIONS.decode(PREDICTIONS.encode(record))["model_weights_meaningful"] is declared


def test_a_prediction_from_before_the_field_reads_as_unknown_never_as_meaningful() -> None:
    record = nested()
    del record["model_weights_meaningful"]
    decoded = PREDICTIONS.decode(PREDICTIONS.versions[1].encode(record))  # as a classifier before v3 wrote it
    assert decoded["model_weights_meaningful"] is None
    assert flatten(decoded)["model_weights_meaningful"] is None


def test_a_reader_of_version_two_refuses_version_three_as_unknown_so_readers_upgrade_first(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(ROOT / "services" / "common" / "schemas", schemas)
    (schemas / "predictions.v3.avsc").unlink()
    released = load_codec("predictions", ("origin",), {2: PREDICTIONS.versions[1].upgrade}, schemas)  # type: ignore[dict-item]
    with pytest.raises(UnknownSchemaError):
        released.decode(PREDICTIONS.encode(nested()))


async def test_rows_stored_before_the_field_are_unknown(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    version_one_file(path)
    store = SqliteStore(path)
    try:
        item = await store.get("7", "3_7")
        assert item is not None
        assert item["model_weights_meaningful"] is None
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("parameters", "declared"),
    [
        ({"weights_meaningful": {"string_value": "true"}}, True),
        ({"weights_meaningful": {"string_value": "false"}}, False),
        ({"weights_meaningful": {"string_value": " TRUE "}}, True),
        ({"weights_meaningful": {"string_value": "yes"}}, None),
        ({"weights_meaningful": {}}, None),
        ({"other": {"string_value": "true"}}, None),
        (None, None),
    ],
)
def test_the_classifier_reads_the_declaration_from_the_model_config(
    parameters: dict[str, object] | None, declared: bool | None
) -> None:
    config: dict[str, object] = {"name": "resnet50"} | ({"parameters": parameters} if parameters is not None else {})
    assert declared_meaningful({"config": config}) is declared


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_the_export_declares_the_weights_in_each_config_and_only_once(form: str) -> None:
    config = (REPOSITORY / form / "resnet50" / "config.pbtxt").read_text()
    for meaningful in (True, False):
        declared = export.with_weights_parameter(config, meaningful)
        assert declared.count('key: "weights_meaningful"') == 1
        assert f'string_value: "{str(meaningful).lower()}"' in declared
        assert export.with_weights_parameter(declared, meaningful) == declared
        # Everything else is left as it was.
        assert export.WEIGHTS_PARAMETER.sub("", declared) == export.WEIGHTS_PARAMETER.sub("", config)
    bare = export.WEIGHTS_PARAMETER.sub("", config)
    added = export.with_weights_parameter(bare, True)
    assert added.startswith(bare.rstrip())
    assert export.WEIGHTS_PARAMETER.search(added) is not None


def test_the_export_writes_the_declaration_into_the_forms_a_repository_has(tmp_path: Path) -> None:
    shutil.copytree(REPOSITORY / "cpu" / "resnet50", tmp_path / "cpu" / "resnet50", ignore=shutil.ignore_patterns("1"))
    export.declare_weights(tmp_path, True)  # no gpu form here: nothing written for it
    assert not (tmp_path / "gpu").exists()
    config = (tmp_path / "cpu" / "resnet50" / "config.pbtxt").read_text()
    assert declared_meaningful({"config": {"parameters": parameter_of(config)}}) is True


def parameter_of(config: str) -> dict[str, dict[str, str]]:
    match = export.WEIGHTS_PARAMETER.search(config)
    assert match is not None
    value = match.group(0).split("string_value:")[1].split('"')[1]
    return {"weights_meaningful": {"string_value": value}}


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_the_configs_declare_what_the_exported_weights_are(form: str) -> None:
    """`make model` keeps them in step with model.json; without an export, they say stand-in."""
    info_path = REPOSITORY / export.GPU_MODEL.with_name("model.json")
    meaningful = json.loads(info_path.read_text())["meaningful"] if info_path.exists() else False
    config = (REPOSITORY / form / "resnet50" / "config.pbtxt").read_text()
    assert parameter_of(config) == {"weights_meaningful": {"string_value": str(meaningful).lower()}}
