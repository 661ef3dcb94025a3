"""How the PostgreSQL store writes free text that holds NUL, as pure functions (no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.sink.postgres_store import FREE_TEXT, escape_nul, from_row
from services.sink.store import to_prediction, to_row

from .fuzzing import budget
from .records import prediction

pytestmark = pytest.mark.fuzz

# Text as an author could write it, weighted towards what the escaping works with.
_texts = st.text(st.one_of(st.sampled_from("\x00\\0a"), st.characters()), max_size=40)


@settings(**budget(200))
@given(texts=st.fixed_dictionaries({column: _texts for column in FREE_TEXT}))
def test_free_text_comes_back_as_it_went_in_and_postgresql_never_sees_a_nul(texts: dict[str, str]) -> None:
    row = to_row(prediction() | texts, stored_ts_ms=2_000_000)
    stored = escape_nul(row)
    assert not any("\x00" in stored[column] for column in FREE_TEXT)
    assert stored["nul_escaped"] == any("\x00" in text for text in texts.values())
    if not stored["nul_escaped"]:
        assert {column: stored[column] for column in FREE_TEXT} == texts
    assert from_row(stored) == to_prediction(row)
