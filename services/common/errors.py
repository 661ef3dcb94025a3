"""The two ways processing a record can fail, shared by every stage.

A `RecordError` is final for that record: it goes to the dead-letter topic with its
`reason` (a short, metric-safe code) and `detail`. A `RetryableError` is a dependency
being unavailable: the record is retried, never dropped or committed.
"""

from __future__ import annotations


class RecordError(Exception):
    """This record can never be processed: it goes to the dead-letter topic with `reason`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryableError(Exception):
    """A dependency is unavailable: retry the record later, never drop or commit it."""
