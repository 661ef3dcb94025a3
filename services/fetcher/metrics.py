"""fetcher's own metrics, beside the shared stream metrics."""

from prometheus_client import Counter, Gauge, Histogram

FETCHES = Counter(
    "tagstream_fetch_results_total", "Images by result and refusal reason, cache hits included.", ["result", "reason"]
)
FETCH_SECONDS = Histogram(
    "tagstream_fetch_seconds",
    "Download time of an image, redirects and retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
FETCH_BYTES = Counter("tagstream_fetch_bytes_total", "Bytes of image bodies downloaded.")
FETCH_RETRIES = Counter(
    "tagstream_fetch_retries_total", "Downloads tried again after a timeout or a 5xx answer.", ["reason"]
)
CACHE_LOOKUPS = Counter(
    "tagstream_fetch_cache_lookups_total",
    "Image URLs looked up in the result cache: hit, coalesced (joined a download under way) or miss.",
    ["result"],
)
CACHE_BYTES = Gauge("tagstream_fetch_cache_bytes", "Bytes held by the result cache.")
BUFFERED_BYTES = Gauge(
    "tagstream_fetch_buffered_bytes", "Bytes of downloaded bodies in memory, from first byte until decoded."
)
DECODE_MEMORY_BYTES = Gauge(
    "tagstream_decode_memory_bytes", "Estimated peak memory of the decodes under way or admitted to start."
)
DECODE_SECONDS = Histogram(
    "tagstream_decode_seconds",
    "Check, decode, resize and crop of one image, in a decode worker.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
DECODE_QUEUE_SECONDS = Histogram(
    "tagstream_decode_queue_seconds",
    "Wait of a downloaded image for a free decode worker.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
)
RENDITIONS = Counter(
    "tagstream_fetch_renditions_total",
    "Images asked for as a named rendition: served, or fell_back to the URL as given after a 4xx.",
    ["outcome"],
)

# Children of the labels every image touches, looked up once: `labels()` costs a lock and a
# dict lookup per call, a few microseconds on each image's path.
FETCHED_OK = FETCHES.labels("ok", "")
RENDITION_SERVED = RENDITIONS.labels("served")
RENDITION_FELL_BACK = RENDITIONS.labels("fell_back")
