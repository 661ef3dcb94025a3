"""Keep secrets out of the logs, whatever logs them: every line the root handlers write is
scrubbed of the given strings. No call site logs the token; this catches a library that would."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import quote, unquote

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8  # shorter strings are not credentials, and would mangle ordinary text


class RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        # Longest first, so a variant that contains another is replaced whole.
        self.secrets = sorted(_variants(secrets), key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def redact_secrets(*secrets: str) -> None:
    """Wrap the formatter of every root handler (call after `services.common.logs.configure`)."""
    kept = [s for s in secrets if len(s) >= MIN_SECRET_LENGTH]
    if not kept:
        return
    for handler in logging.getLogger().handlers:
        inner = handler.formatter or logging.Formatter()
        if isinstance(inner, RedactingFormatter):
            inner = inner.inner
        handler.setFormatter(RedactingFormatter(inner, kept))


def _variants(secrets: Iterable[str]) -> set[str]:
    """The secret as written, URL-decoded and -encoded, and JSON-escaped (as a JSON log line holds it)."""
    found: set[str] = set()
    for secret in secrets:
        for form in (secret, unquote(secret), quote(secret, safe="")):
            found.add(form)
            found.add(json.dumps(form)[1:-1])
    return {f for f in found if len(f) >= MIN_SECRET_LENGTH}
