"""fetcher's own metrics, beside the shared stream metrics."""

from prometheus_client import Counter, Histogram

FETCHES = Counter(
    "tagstream_fetch_results_total", "Image downloads by result and refusal reason.", ["result", "reason"]
)
FETCH_SECONDS = Histogram(
    "tagstream_fetch_seconds",
    "Download time of an image, redirects included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
FETCH_BYTES = Counter("tagstream_fetch_bytes_total", "Bytes of image bodies downloaded.")
DECODE_SECONDS = Histogram(
    "tagstream_decode_seconds",
    "Check, decode, resize and crop of one image.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
