"""classifier's own metrics: the Triton client side, and the prediction cache in front of it."""

from prometheus_client import Counter, Gauge, Histogram

REQUEST_SECONDS = Histogram(
    "tagstream_triton_request_seconds",
    "One batched inference request to Triton, as the client sees it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "tagstream_triton_batch_size", "Images per inference request.", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
REQUESTS_IN_FLIGHT = Gauge("tagstream_triton_requests_in_flight", "Inference requests awaiting Triton.")
REQUEST_ERRORS = Counter("tagstream_triton_request_errors_total", "Failed inference requests by status.", ["status"])
CACHE_LOOKUPS = Counter(
    "tagstream_classifier_cache_lookups_total",
    "Images looked up in the prediction cache: hit (no inference), coalesced (shared an inference "
    "under way) or miss (inferred).",
    ["result"],
)
CACHE_ENTRIES = Gauge("tagstream_classifier_cache_entries", "Images whose scores the prediction cache holds.")
