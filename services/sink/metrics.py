"""sink's own metrics: how its store commits."""

from prometheus_client import Histogram

COMMIT_ROWS = Histogram(
    "tagstream_sink_commit_rows",
    "Rows per store transaction: concurrent upserts are committed together (group commit).",
    ["store"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
