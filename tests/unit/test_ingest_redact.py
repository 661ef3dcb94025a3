import io
import logging
from collections.abc import Iterator

import pytest

from services.common.logs import JsonFormatter
from services.ingest.redact import REDACTED, redact_secrets

SECRET = 'AAAA%2Fbearer+token/with"quote'


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    yield out
    root.handlers[:], level = saved
    root.setLevel(level)


def test_a_secret_is_scrubbed_from_messages_fields_and_tracebacks(log_output: io.StringIO) -> None:
    redact_secrets(SECRET)
    log = logging.getLogger("some.library")
    log.debug("headers: %s", {"Authorization": f"Bearer {SECRET}"})
    log.info("fields", extra={"fields": {"token": SECRET}})
    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError:
        log.exception("boom")
    log.info("url-decoded %s", 'AAAA/bearer+token/with"quote')
    text = log_output.getvalue()
    assert len(text.splitlines()) == 4
    assert SECRET not in text
    assert "bearer+token" not in text
    assert text.count(REDACTED) >= 4


def test_installing_twice_does_not_stack_formatters(log_output: io.StringIO) -> None:
    redact_secrets(SECRET)
    redact_secrets(SECRET)
    logging.getLogger("x").warning("plain message")
    assert '"msg": "plain message"' in log_output.getvalue()


def test_short_strings_are_not_treated_as_secrets(log_output: io.StringIO) -> None:
    redact_secrets("a")
    logging.getLogger("x").warning("a normal line")
    assert "a normal line" in log_output.getvalue()
