"""SINK_DATABASE_URL's password kept out of the text libpq parses, and out of every error."""

from __future__ import annotations

from urllib.parse import quote

import psycopg.conninfo
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.sink.credentials import split_password
from services.sink.settings import SinkSettings

from .fuzzing import budget

PASSWORD = "Pw-7f3a9c1e-secret"


@pytest.mark.parametrize(
    ("url", "bare"),
    [
        (f"postgresql://u:{PASSWORD}@h:5432/db", "postgresql://u@h:5432/db"),
        (f"postgres://u:{PASSWORD}@h", "postgres://u@h"),
        (f"postgresql://u:{PASSWORD}@h1:1,h2:2/db?sslmode=disable", "postgresql://u@h1:1,h2:2/db?sslmode=disable"),
        (f"postgresql://h/db?application_name=a&password={PASSWORD}", "postgresql://h/db?application_name=a"),
        (f"postgresql://h/db?pass%77ord={PASSWORD}", "postgresql://h/db"),
    ],
)
def test_the_password_leaves_the_url(url: str, bare: str) -> None:
    assert split_password(url) == (bare, PASSWORD)


def test_a_url_without_a_password_is_left_alone() -> None:
    assert split_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert split_password("postgresql:///db") == ("postgresql:///db", None)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"postgresql+psycopg://u:{PASSWORD}@h/db", "postgresql://"),
        (f"postgresql://u:{PASSWORD}%zz@h/db", "%XX"),
        (f"postgresql://u:{PASSWORD}%ff@h/db", "UTF-8"),
        (f"postgresql://u:{PASSWORD}@[::1/db", "IPv6"),
        (f"postgresql://u:{PASSWORD}@h/db?bogus=1", "bogus"),
        (f"postgresql://u:{PASSWORD}/x@h/db", "percent-encode"),
        (f"postgresql://h/db?password={PASSWORD}%zz", "%XX"),
    ],
)
def test_a_url_libpq_cannot_read_is_refused_without_quoting_the_password(
    url: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        split_password(url)
    assert PASSWORD[:8] not in str(refused.value)
    monkeypatch.setenv("SINK_DATABASE_URL", url)
    with pytest.raises(ValidationError) as invalid:
        SinkSettings()
    assert reason in str(invalid.value)
    assert PASSWORD[:8] not in str(invalid.value)


_passwords = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@pytest.mark.fuzz
@settings(**budget(200))
@given(password=_passwords, in_query=st.booleans())
def test_libpq_gets_the_same_connection_parameters(password: str, in_query: bool) -> None:
    encoded = quote(password, safe="")
    url = (
        f"postgresql://h:5432/db?sslmode=disable&password={encoded}"
        if in_query
        else f"postgresql://me:{encoded}@h:5432/db?sslmode=disable"
    )
    bare, split = split_password(url)
    assert split == password
    parameters = psycopg.conninfo.conninfo_to_dict(bare)
    assert "password" not in parameters
    assert parameters | {"password": split} == psycopg.conninfo.conninfo_to_dict(url)
