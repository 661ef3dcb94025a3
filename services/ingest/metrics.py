"""ingest's own metrics: the X stream connection. Posts read and produced are the shared
`tagstream_records_consumed_total{stage="ingest",topic="x_stream"|"x_search"|"replay"}` and
`tagstream_records_produced_total`; duplicates are `tagstream_records_skipped_total{reason="duplicate"}`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STREAM_CONNECTS = Counter(
    "tagstream_x_stream_connects_total", "Connections to the X filtered stream that got HTTP 200."
)
STREAM_DISCONNECTS = Counter(
    "tagstream_x_stream_disconnects_total",
    "Ended stream connection attempts, by reason: closed, network_error, stall, operational_disconnect, "
    "http_error, rate_limited.",
    ["reason"],
)
STREAM_STALLS = Counter(
    "tagstream_x_stream_stalls_total", "Connections dropped because neither data nor keep-alives arrived in time."
)
RATE_LIMITS = Counter(
    "tagstream_x_rate_limits_total", "HTTP 429 answers from the X API, by endpoint (stream, search).", ["endpoint"]
)
HTTP_ERRORS = Counter(
    "tagstream_x_http_errors_total", "Non-2xx answers from the X API, by endpoint and status.", ["endpoint", "status"]
)
KEEP_ALIVES = Counter("tagstream_x_stream_keep_alives_total", "Keep-alive lines received on the stream.")
STREAM_ERRORS = Counter(
    "tagstream_x_stream_error_messages_total",
    "Error messages the stream delivered instead of a post, by title (operational-disconnect, ...).",
    ["title"],
)
STREAM_CONNECTED = Gauge("tagstream_x_stream_connected", "1 while a stream connection is open, else 0.")
RECONNECT_WAIT_SECONDS = Counter(
    "tagstream_x_stream_reconnect_wait_seconds_total", "Time spent backing off before reconnecting."
)
RULES_CHANGED = Counter(
    "tagstream_x_rules_changed_total", "Stream rules added or deleted by the rules sync.", ["change"]
)
DELIVERY_FAILURES = Counter(
    "tagstream_ingest_delivery_failures_total",
    "Posts the broker refused for their size; each went to the dead-letter topic, cut to fit, instead.",
)

KNOWN_ERROR_TITLES = frozenset(
    {"operational-disconnect", "ConnectionException", "Invalid Request", "Not Found Error", "Authorization Error"}
)


def error_title_label(title: object) -> str:
    """Metric-safe title: a known one, else `other` (titles come from the network)."""
    return title if isinstance(title, str) and title in KNOWN_ERROR_TITLES else "other"
