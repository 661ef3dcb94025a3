"""Checks responses against the sink's checked-in OpenAPI description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS31Validator

SPEC_PATH = Path(__file__).resolve().parents[2] / "services" / "sink" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in SPEC["paths"].items() for method in item if method in HTTP_METHODS}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def response_schema(path: str, status: int, content_type: str, method: str = "get") -> dict[str, Any]:
    """The schema the document gives for this answer; fails if the answer is not documented."""
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document status {status}"
    content = _resolve(responses[str(status)])["content"]
    assert content_type in content, f"{method.upper()} {path} {status} does not document {content_type}"
    return _resolve(content[content_type]["schema"])


def validate(path: str, status: int, content_type: str, body: Any, method: str = "get") -> None:
    schema = response_schema(path, status, content_type, method)
    OAS31Validator({**schema, "components": SPEC["components"]}).validate(body)


def validate_schema(name: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    OAS31Validator(schema).validate(body)
