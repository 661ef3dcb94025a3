"""Prometheus metrics every stage shares; the `stage` label says which service counted."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

RECORDS_CONSUMED = Counter("tagstream_records_consumed_total", "Records read from the input topic.", ["stage", "topic"])
RECORDS_PRODUCED = Counter(
    "tagstream_records_produced_total", "Records delivered to an output topic.", ["stage", "topic"]
)
RECORDS_SKIPPED = Counter(
    "tagstream_records_skipped_total",
    "Input that needs no output by design (for example a post without images).",
    ["stage", "reason"],
)
DELIVERY_RETRIES = Counter(
    "tagstream_delivery_retries_total",
    "Records written again after the broker did not take them within the delivery timeout.",
    ["stage"],
)
TRANSACTIONS = Counter(
    "tagstream_transactions_total",
    "Kafka transactions ended, by outcome: committed, or aborted (its records are processed again).",
    ["stage", "outcome"],
)
TRANSACTION_SECONDS = Histogram(
    "tagstream_transaction_commit_seconds",
    "Time to commit one transaction: its offsets sent, its records flushed, its end acknowledged.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("tagstream_dead_letters_total", "Records sent to a dead-letter topic.", ["stage", "reason"])
PROCESSING_SECONDS = Histogram(
    "tagstream_processing_seconds",
    "From a record's arrival in the stage to its outputs being delivered.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "tagstream_end_to_end_latency_seconds",
    "From the post's ingest timestamp to this stage's output being delivered.",
    ["stage", "priority"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("tagstream_records_in_flight", "Records being processed now.", ["stage"])
CONSUMER_LAG = Gauge(
    "tagstream_consumer_lag_records",
    "Records behind the high watermark, per partition this stage reads, as of its last fetch.",
    ["stage", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "tagstream_consumer_lag_seconds",
    "Now minus the Kafka timestamp of the newest record read, per partition (0 when caught up).",
    ["stage", "topic", "partition"],
)
DOWNSTREAM_LAG = Gauge(
    "tagstream_downstream_lag_records",
    "Records on this stage's output topic that the next stage's group (label group) has not committed, "
    "written more than one commit interval ago.",
    ["stage", "topic", "group"],
)
DOWNSTREAM_LAG_SECONDS = Gauge(
    "tagstream_downstream_lag_seconds",
    "Age of the oldest record the next stage's group (label group) has not committed, less one commit "
    "interval (worst partition).",
    ["stage", "topic", "group"],
)
SHED = Counter(
    "tagstream_records_shed_total",
    "Records dropped under load before any expensive work, by their priority.",
    ["stage", "priority"],
)
SHED_DECODED = Counter(
    "tagstream_records_shed_decoded_total",
    "Shed records whose value had to be decoded to learn their priority (no envelope headers).",
    ["stage"],
)
SHED_LEVEL = Gauge("tagstream_shed_level", "Active shedding level; 0 keeps everything.", ["stage"])
SHED_MIN_PRIORITY = Gauge(
    "tagstream_shed_min_priority", "Lowest priority still processed; NaN when nothing is shed.", ["stage"]
)
