"""Every parameter of every endpoint, fuzzed over a real socket against each store.

Nothing may answer 5xx, and every answer the OpenAPI document describes for its route
must match it. Values reach the server as raw percent-encoded bytes, so invalid UTF-8,
NUL, overlong numbers and forged cursors (huge integers, lone surrogates, deep nesting)
all arrive as an attacker would send them.

How many examples, and how they are drawn: tests/sink/fuzzing.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.sink.store import INT64_MAX, INT64_MIN, Cursor, Store

from .fuzzing import budget
from .openapi import SPEC, validate
from .records import prediction
from .test_api import Api, serving

pytestmark = pytest.mark.fuzz

# aiohttp's parser refuses a longer request line (its default max_line_size, 8190 bytes).
MAX_REQUEST_LINE = 8190 - len("GET  HTTP/1.1")

FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    **budget(200),
)

EDGE_INTEGERS = (0, 1, -1, 500, 501, INT64_MAX, INT64_MAX + 1, INT64_MIN, INT64_MIN - 1, 10**40)
EDGE_TEXT = (
    "", " ", "0", "-0", "+1", " 1", "1 ", "1_0", "0x10", "1e3", "1.5", "nan", "NaN", "inf", "-inf", "infinity",
    "\x00", "cats\x00", "\u0663", "\ufeff1", "\U0001f408", "cats", "others", "a" * 64, "a" * 65, "'; DROP TABLE x; --",
)  # fmt: skip


def _cursor_text(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode("utf-8", "surrogatepass")).decode().rstrip("=")


# Any JSON the cursor decoder may meet: mostly the right shape with values no store can
# hold, also wrong shapes, deep nesting and no JSON at all. json.dumps writes a lone
# surrogate as the escape `\ud800`, which json.loads turns back into one.
_out_of_range = st.one_of(
    st.sampled_from(EDGE_INTEGERS), st.integers(INT64_MAX + 1, 10**30), st.integers(max_value=INT64_MIN - 1)
)
_odd_ids = st.one_of(
    st.sampled_from(["", "1", "\x00", "3_1\x00", "\ud800", "a\udfff"]), st.text(st.characters(codec=None), max_size=12)
)
_shaped = st.tuples(st.one_of(_out_of_range, st.integers()), _odd_ids, _odd_ids).map(
    lambda t: _cursor_text(json.dumps(list(t)))
)
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _odd_ids)
_forged_cursors = st.one_of(
    _shaped,
    _shaped,
    _shaped,
    st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12).map(
        lambda v: _cursor_text(json.dumps(v))
    ),
    st.integers(1, 3000).map(lambda depth: _cursor_text("[" * depth + "]" * depth)),
    st.text(max_size=40),
)

# Hostile values by the type the document gives a parameter, and anything at all.
_integers = st.one_of(_out_of_range, st.integers(max_value=-1), st.integers()).map(str)
_numbers = st.one_of(st.floats().map(repr), st.sampled_from(EDGE_TEXT))
_texts = st.one_of(st.sampled_from(EDGE_TEXT), st.text(st.characters(codec=None), max_size=30))
_anything = st.one_of(_integers, _numbers, _texts, _forged_cursors, st.binary(max_size=30))
_HOSTILE = {"integer": _integers, "number": _numbers, "string": _texts}
_ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def _valid(name: str, schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Values the document allows, so that a request's one hostile value gets past the others."""
    if name == "cursor":
        return st.builds(Cursor, st.integers(0, 2**42), _ids, _ids).map(Cursor.encode)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema["type"] == "integer":
        return st.integers(schema.get("minimum", 0), schema.get("maximum", INT64_MAX)).map(str)
    if schema["type"] == "number":
        return st.floats(schema.get("minimum", 0), schema.get("maximum", 1)).map(str)
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=schema.get("maxLength", 30))


def _wire(value: str | bytes) -> bytes:
    """The bytes that go on the wire; a lone surrogate goes out as the invalid UTF-8 a careless client sends."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Parameter:
    name: str
    in_path: bool
    valid: st.SearchStrategy[str]
    hostile: st.SearchStrategy[str | bytes]


def _parameters(path: str) -> list[Parameter]:
    found = []
    for parameter in SPEC["paths"][path]["get"].get("parameters", []):
        if "$ref" in parameter:
            parameter = SPEC["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        name, schema = parameter["name"], parameter["schema"]
        typed = _forged_cursors if name == "cursor" else _HOSTILE[schema["type"]]
        hostile = st.one_of(typed, typed, _anything)  # two in three of the parameter's own type
        found.append(Parameter(name, parameter["in"] == "path", _valid(name, schema), hostile))
    return found


PARAMETERS = {path: _parameters(path) for path in SPEC["paths"]}
# Routes with parameters drawn more often than those without.
ROUTES = [path for path, named in PARAMETERS.items() for _ in range(1 + len(named))]
UNKNOWN = Parameter("unknown", False, _texts, _anything)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """(route template, encoded path and query) of one GET request: valid values around one or
    more hostile ones, so that each hostile value gets past the checks of the others."""
    template = draw(st.sampled_from(ROUTES))
    parameters = [*PARAMETERS[template], UNKNOWN]
    names = [p.name for p in parameters]
    hostile = set(names) if draw(st.booleans()) and draw(st.booleans()) else {draw(st.sampled_from(names))}
    path, pairs = template, []
    for parameter in parameters:
        if not (parameter.in_path or parameter.name in hostile or draw(st.booleans())):
            continue
        value = _wire(draw(parameter.hostile if parameter.name in hostile else parameter.valid))
        if parameter.in_path:
            path = path.replace("{" + parameter.name + "}", quote_from_bytes(value, safe=""))
        else:
            pairs.append((parameter.name, value))
    pairs += draw(st.lists(st.sampled_from(pairs), max_size=2)) if pairs else []  # a name given twice
    query = "&".join(f"{quote(name)}={quote_from_bytes(value, safe='')}" for name, value in pairs)
    return template, path + (f"?{query}" if query else "")


@pytest.fixture
async def fuzzed_api(store: Store) -> AsyncIterator[Api]:
    """The API over a store holding a few predictions, some with hostile text."""
    await store.upsert(prediction("1", tags=(("cats", 0.9),), ts=1_000))
    await store.upsert(prediction("2", "3_2", tags=(("dogs", 0.7), ("cats", 0.4)), ts=2_000, text="\x00 nul \\0"))
    await store.upsert(prediction("3", tags=(), ts=3_000, text="\U0001f408 <b>", author_username=None))
    # Streams a request opens stay open until a heartbeat finds them gone: room for all of them.
    async with serving(store, max_streams=1_000_000) as running:
        yield running


async def answer(api: Api, template: str, target: str) -> int:
    """Send one request; fail on a 5xx or an answer openapi.yaml does not allow."""
    async with api.session.get(yarl.URL(api.base + target, encoded=True), allow_redirects=False) as response:
        assert response.status < 500, f"{response.status} for {target}: {await response.text()}"
        if len(target) > MAX_REQUEST_LINE:  # refused by aiohttp's parser, before any route
            assert response.status in (400, 414)
            return response.status
        if template == "/api/events" and response.status == 200:
            assert response.content_type == "text/event-stream"
            assert await response.content.readline() == b"retry: 3000\n"
            return response.status
        body: Any = await response.json() if response.content_type == "application/json" else await response.text()
        validate(template, response.status, response.content_type, body)
        return response.status


@FUZZ_SETTINGS
@given(request=requests())
async def test_no_request_makes_the_api_fail_or_break_its_contract(fuzzed_api: Api, request: tuple[str, str]) -> None:
    template, target = request
    await answer(fuzzed_api, template, target)
