"""What exactly-once costs, measured side by side with at-least-once in one run.

The classifier with the do-nothing model (`noop`) on the local Triton, so what is measured is
the stream loop and its transactions, not inference:
- `eos_throughput_ratio`: a backlog of images classified under each guarantee in turn
  (A B A B ...), images/s from the first to the last prediction a read_committed reader sees;
  the ratio of the medians.
- `eos_added_p99_s`: images written at a steady rate; the end-to-end p99, from the write to a
  read_committed reader holding the prediction, under each guarantee; the difference.
- `chaos_recovery_p99_s`: the chaos run (tests/chaos) with stage kills only, one after
  another: the p99 of the time from a kill -9 until the killed stage's output flows again;
  and the same with static group membership off, for what it saves.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer

from services.common.settings import KafkaSettings
from tests.chaos.harness import STAGES, Plan
from tests.chaos.harness import run as chaos_run

from .bench_classifier import fresh_topics, produce_images, sample_pixels
from .figures import Figure
from .stack import ROOT, free_port, running

TRITON = "localhost:8001"
GUARANTEES = ("exactly_once", "at_least_once")
BACKLOG = 3000
ROUNDS = 7  # alternated: three left the ratio at the mercy of one noisy round (0.72 and 0.93 in two runs)
STEADY_RATE = 100.0  # images/s, well under what either guarantee sustains
STEADY_S = 30.0


@contextmanager
def classifier(guarantee: str, source: str, sink: str) -> Iterator[None]:
    port = free_port()
    env = {
        **os.environ,
        "CLASSIFIER_INPUT_TOPIC": source,
        "CLASSIFIER_OUTPUT_TOPIC": sink,
        "CLASSIFIER_GROUP_ID": f"bench-eos-{uuid.uuid4().hex[:8]}",
        "CLASSIFIER_MODEL_NAME": "noop",
        "CLASSIFIER_TRITON_URL": TRITON,
        "CLASSIFIER_METRICS_PORT": str(port),
        "CLASSIFIER_PROCESSING_GUARANTEE": guarantee,
        "CLASSIFIER_SHEDDING_ENABLED": "false",
        "CLASSIFIER_MAX_IN_FLIGHT": "256",
        # eight images, repeated: every copy is inferred, as distinct images would be
        "CLASSIFIER_PREDICTION_CACHE_TTL_S": "0",
        "LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "services.classifier"], cwd=ROOT, env=env, stderr=log)
        try:
            yield
        finally:
            process.terminate()
            process.wait(30)


def arrivals(topic: str, expected: int, timeout_s: float) -> list[tuple[float, int]]:
    """(arrival time, the record's write timestamp in ms) of the first `expected` predictions a
    read_committed reader sees."""
    consumer = Consumer(
        {
            "bootstrap.servers": KafkaSettings().bootstrap_servers,
            "group.id": f"bench-eos-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    seen.append((time.time(), _ingest_ms(message.headers())))
    finally:
        consumer.close()
    if len(seen) < expected:
        raise RuntimeError(f"only {len(seen)} of {expected} predictions on {topic}")
    return seen


def _ingest_ms(headers: object) -> int:
    for name, value in headers or ():  # type: ignore[attr-defined]
        if name == "ingest_ts_ms":
            return int(value)
    raise ValueError("a prediction without its ingest_ts_ms header")


def backlog_rate(guarantee: str, images: list[bytes]) -> float:
    source, sink = fresh_topics("bench-eos")
    produce_images(source, images, BACKLOG, "raw")
    with classifier(guarantee, source, sink):
        seen = arrivals(sink, BACKLOG, timeout_s=300)
    times = sorted(t for t, _ in seen)
    return (len(times) - 1) / (times[-1] - times[0])


def steady_p99(guarantee: str, images: list[bytes]) -> float:
    """End-to-end p99 at a steady rate: from each image's write (its ingest time, set when it is
    written here) to a read_committed reader holding its prediction."""
    source, sink = fresh_topics("bench-eos")
    count = int(STEADY_RATE * STEADY_S)
    with classifier(guarantee, source, sink):
        time.sleep(5)  # joined and ready before the first write
        writer = threading.Thread(target=_write_steadily, args=(source, images, count), daemon=True)
        writer.start()
        seen = arrivals(sink, count, timeout_s=STEADY_S + 120)
        writer.join()
    latencies = sorted(arrived - ingest_ms / 1000 for arrived, ingest_ms in seen)
    return latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]


def _write_steadily(topic: str, images: list[bytes], count: int) -> None:
    """`count` images at STEADY_RATE, a tenth of a second's worth at a time (each chunk's
    images carry the time it was written as their ingest time)."""
    chunk = max(1, round(STEADY_RATE / 10))
    started = time.monotonic()
    for n in range(0, count, chunk):
        delay = started + n / STEADY_RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        produce_images(topic, images, min(chunk, count - n), "raw")


def chaos_recovery(static_membership: bool, kills: int) -> tuple[float, dict[str, object]]:
    plan = Plan(
        seed=random.SystemRandom().randrange(1 << 32),
        duration_s=40.0 * kills,
        rate=3.0,
        kills=kills,
        broker_kills=0,
        triton_outage_s=0.0,
        extra_env={f"{stage.upper()}_STATIC_MEMBERSHIP": str(static_membership).lower() for stage in STAGES},
    )
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as work:
        report = chaos_run(plan, Path(work))
    if report.problems():
        raise RuntimeError(f"the chaos run lost or duplicated records: {report.problems()} (seed {plan.seed})")
    every = report.recoveries()
    p99 = every[min(len(every) - 1, round(0.99 * (len(every) - 1)))]
    by_stage = {stage: [round(t, 1) for t in report.recoveries(stage)] for stage in STAGES}
    return p99, {"seed": plan.seed, "kills": len(report.kills), "measured": len(every), "recovery_s": by_stage}


def run() -> list[Figure]:
    with running("scripts/kafka.sh", "scripts/triton.sh"):
        images = sample_pixels(8)
        rates: dict[str, list[float]] = {g: [] for g in GUARANTEES}
        for _ in range(ROUNDS):
            for guarantee in GUARANTEES:
                rates[guarantee].append(backlog_rate(guarantee, images))
        p99 = {g: steady_p99(g, images) for g in GUARANTEES}
        recovery_p99, recovery_context = chaos_recovery(static_membership=True, kills=4)
        dynamic_p99, dynamic_context = chaos_recovery(static_membership=False, kills=2)
    eos, alo = (statistics.median(rates[g]) for g in GUARANTEES)
    load = os.getloadavg()[0]
    throughput_context = {
        "images_per_s": {g: [round(r) for r in rates[g]] for g in GUARANTEES},
        "backlog_images": BACKLOG,
        "model": "noop",
        "load_average_1m": round(load, 1),
    }
    latency_context = {
        "p99_s": {g: round(p99[g], 3) for g in GUARANTEES},
        "rate_images_per_s": STEADY_RATE,
        "seconds": STEADY_S,
        "commit_interval_s": 0.1,
        "load_average_1m": round(load, 1),
    }
    return [
        Figure("eos_throughput_ratio", eos / alo, "ratio", ">= 0.9", throughput_context),
        Figure("eos_added_p99_s", p99["exactly_once"] - p99["at_least_once"], "s", "", latency_context),
        Figure(
            "chaos_recovery_p99_s",
            recovery_p99,
            "s",
            "<= 10",
            {**recovery_context, "without_static_membership": {"p99_s": round(dynamic_p99, 1), **dynamic_context}},
        ),
    ]
