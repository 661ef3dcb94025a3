"""Lag-driven shedding under a 3x overload burst, against no shedding and the seed's throttle.

For each mode the benchmark runs its own fetcher and classifier processes (stand-in
ResNet50 on the local Triton; images from the demo image server) on fresh topics, and
replays posts shaped as: half the capacity for 10 s, three times the capacity for 60 s,
half the capacity for 30 s; 20 % of the posts high priority. Capacity is measured first,
in the same run, as the classified images per second of a backlog.

- on: default shedding, with one level sized for this machine's capacity
- off: shedding disabled
- throttle: shedding disabled, the replay sends at most 128 posts per 8 s (the seed's way)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from services.common.avro import PREDICTIONS
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.stages import TopicSpec
from services.ingest.loadshape import HIGH_RULE
from tools import demo_data

from .figures import Figure
from .stack import ROOT, free_port, running

STEADY_S, BURST_S, TAIL_S = 10.0, 60.0, 30.0
BURST_FACTOR, HIGH_SHARE = 3.0, 0.2
DRAIN_TIMEOUT_S = 300.0
IMAGES = "http://127.0.0.1:8765"


def posts_file(directory: Path) -> Path:
    """Single-photo posts of the demo stream, so posts and images count alike."""
    path = directory / "posts.jsonl"
    with path.open("w") as f:
        for payload in demo_data.payloads(IMAGES):
            media = payload["includes"].get("media", [])
            if len(media) == 1 and "/photo-" in media[0].get("url", ""):
                f.write(json.dumps(payload) + "\n")
    return path


class Pipeline:
    """Fetcher and classifier processes of a run, on topics of their own."""

    def __init__(self, name: str, shedding: bool, lag_seconds: float, log_dir: Path) -> None:
        run = f"{name}-{uuid.uuid4().hex[:6]}"
        self.tweets, self.images, self.predictions = (f"bench-{t}-{run}" for t in ("tweets", "images", "predictions"))
        ensure_topics(
            KafkaSettings(),
            [TopicSpec(t, 3) for t in (self.tweets, self.images, self.predictions)]
            + [TopicSpec(t + suffix, 1) for t in (self.tweets, self.images) for suffix in (".dlq", ".shed")],
        )
        levels = json.dumps([{"min_priority": 2, "lag_records": 10_000, "lag_seconds": lag_seconds}])
        self.lag_seconds = lag_seconds
        common = {"LOG_LEVEL": "WARNING"}
        self.ports = {"fetcher": free_port(), "classifier": free_port()}
        self.envs = {
            "fetcher": {
                **common,
                "FETCHER_INPUT_TOPIC": self.tweets,
                "FETCHER_OUTPUT_TOPIC": self.images,
                "FETCHER_GROUP_ID": f"bench-fetcher-{run}",
                "FETCHER_METRICS_PORT": str(self.ports["fetcher"]),
                "FETCHER_ALLOW_PRIVATE_NETWORKS": "true",
                "FETCHER_SHEDDING_ENABLED": str(shedding).lower(),
                "FETCHER_SHED_LEVELS": levels,
                "FETCHER_DOWNSTREAM_GROUP": f"bench-classifier-{run}",
                # Posts admitted to the window wait there after the shedding decision: on two
                # shared cores 16 is a fraction of a second of downloads and decodes.
                "FETCHER_MAX_IN_FLIGHT": "16",
            },
            "classifier": {
                **common,
                "CLASSIFIER_INPUT_TOPIC": self.images,
                "CLASSIFIER_OUTPUT_TOPIC": self.predictions,
                "CLASSIFIER_GROUP_ID": f"bench-classifier-{run}",
                "CLASSIFIER_METRICS_PORT": str(self.ports["classifier"]),
                "CLASSIFIER_SHEDDING_ENABLED": str(shedding).lower(),
                "CLASSIFIER_SHED_LEVELS": levels,
                # A CPU model does a few images a second: a small window keeps the wait after
                # the shedding decision short (README: sizing the classifier's window).
                "CLASSIFIER_MAX_BATCH_SIZE": "4",
                "CLASSIFIER_MAX_IN_FLIGHT": "8",
                # The demo's few photos, repeated: every copy is inferred, as distinct photos would be.
                "CLASSIFIER_PREDICTION_CACHE_TTL_S": "0",
            },
        }
        self.log_dir = log_dir

    @contextmanager
    def running(self) -> Iterator[None]:
        with ExitStack() as stack:
            for service, env in self.envs.items():
                log = stack.enter_context((self.log_dir / f"{service}-{self.tweets}.log").open("wb"))
                process = subprocess.Popen(
                    [sys.executable, "-m", f"services.{service}"], cwd=ROOT, env={**os.environ, **env}, stderr=log
                )
                stack.callback(_stop, process)
                _wait_ready(self.ports[service])
            yield

    def shed_counts(self) -> tuple[float, float]:
        """(records shed, of which decoded to learn their priority), both stages together."""
        shed = decoded = 0.0
        for port in self.ports.values():
            values = _scrape(port)
            shed += sum(v for k, v in values.items() if k.startswith("tagstream_records_shed_total{"))
            decoded += sum(v for k, v in values.items() if k.startswith("tagstream_records_shed_decoded_total{"))
        return shed, decoded

    def lag(self) -> tuple[float, float]:
        """(records, seconds) behind, the larger of the two stages."""
        records, seconds = 0.0, 0.0
        for port in self.ports.values():
            values = _scrape(port)
            records = max(records, sum(v for k, v in values.items() if k.startswith("tagstream_consumer_lag_records")))
            seconds = max(
                seconds,
                max((v for k, v in values.items() if k.startswith("tagstream_consumer_lag_seconds")), default=0.0),
            )
        return records, seconds


def replay(pipeline: Pipeline, posts: Path, rate: float, throttle: str | None) -> dict[str, Any]:
    duration = STEADY_S + BURST_S + TAIL_S
    args = [
        sys.executable,
        "-m",
        "services.ingest",
        "replay",
        str(posts),
        "--rate",
        f"{rate / BURST_FACTOR / 2:.3f}",
        "--duration",
        str(duration),
        "--burst",
        str(2 * BURST_FACTOR),
        "--burst-start",
        str(STEADY_S),
        "--burst-seconds",
        str(BURST_S),
        "--high-share",
        str(HIGH_SHARE),
    ]
    if throttle:
        args += ["--throttle", throttle]
    env = {**os.environ, "INGEST_OUTPUT_TOPIC": pipeline.tweets, "INGEST_DLQ_TOPIC": pipeline.tweets + ".dlq"}
    done = subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def sent_posts(topic: str) -> dict[str, dict[str, Any]]:
    """What ingest produced: tweet id → record (priority, ingest time)."""
    from services.common.avro import TWEETS

    return {r["tweet_id"]: r for r in _read(topic, TWEETS.decode)}


def run_mode(name: str, posts: Path, capacity: float, log_dir: Path) -> dict[str, Any]:
    burst_rate = BURST_FACTOR * capacity
    pipeline = Pipeline(name, shedding=name == "on", lag_seconds=2.0, log_dir=log_dir)
    lag_samples: list[tuple[float, float, float]] = []
    stop = threading.Event()
    with pipeline.running():
        started = time.monotonic()

        def watch() -> None:
            while not stop.is_set():
                with suppress(OSError):
                    lag_samples.append((time.monotonic() - started, *pipeline.lag()))
                stop.wait(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        summary = replay(pipeline, posts, burst_rate, "128/8" if name == "throttle" else None)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:  # until both stages are caught up
            time.sleep(2)
            if lag_samples and lag_samples[-1][1] == 0 and _in_flight(pipeline) == 0:
                break
        stop.set()
        watcher.join()
        shed, shed_decoded = pipeline.shed_counts()
    sent = sent_posts(pipeline.tweets)
    predicted = {p["origin"]["tweet_id"]: p for p in _read(pipeline.predictions, PREDICTIONS.decode)}
    burst_end = STEADY_S + BURST_S
    recovery = next((t - burst_end for t, _, s in lag_samples if t >= burst_end and s < pipeline.lag_seconds), None)
    return {
        "summary": summary,
        "sent": sent,
        "predicted": predicted,
        "recovery_s": recovery,
        "capacity": capacity,
        "shed": shed,
        "shed_decoded": shed_decoded,
    }


def figures_of(mode: dict[str, Any]) -> dict[str, float]:
    sent, predicted = mode["sent"], mode["predicted"]
    high = [t for t, r in sent.items() if r["matching_rules"][0]["tag"] == HIGH_RULE["tag"]]
    high_set = set(high)
    low = [t for t in sent if t not in high_set]
    throttled, throttled_high = mode["summary"].get("throttled", 0), mode["summary"].get("throttled_high", 0)
    low_total = len(low) + throttled - throttled_high
    high_latencies = sorted(
        (predicted[t]["classify_ts_ms"] - sent[t]["ingest_ts_ms"]) / 1000 for t in high if t in predicted
    )
    high_total = len(high) + throttled_high  # posts a throttle never read are lost

    return {
        "high_p99_s": _p99(high_latencies),
        "high_p50_s": statistics.median(high_latencies) if high_latencies else float("nan"),
        "high_loss_pct": 100 * (high_total - len(high_latencies)) / max(high_total, 1),
        "low_kept_pct": 100 * sum(1 for t in low if t in predicted) / max(low_total, 1),
        "recovery_s": float("nan") if mode["recovery_s"] is None else mode["recovery_s"],
        "posts": len(sent) + throttled,
        "shed": mode["shed"],
        "shed_decode_skipped_pct": 100 * (1 - mode["shed_decoded"] / mode["shed"]) if mode["shed"] else float("nan"),
    }


def measure_capacity(posts: Path, log_dir: Path) -> dict[str, float]:
    """The pipeline's sustained rate, with the fetcher working beside the classifier.

    First the classifier's rate through a backlog (the fetcher idle once it has fetched it),
    then the rate of predictions while the pipeline is fed at that rate for 40 s, measured
    over the last 25 s: both stages then share the cores as they do during a burst.
    """
    pipeline = Pipeline("capacity", shedding=False, lag_seconds=2.0, log_dir=log_dir)
    env = {**os.environ, "INGEST_OUTPUT_TOPIC": pipeline.tweets, "INGEST_DLQ_TOPIC": pipeline.tweets + ".dlq"}
    backlog = [sys.executable, "-m", "services.ingest", "replay", str(posts), "--rate", "1000", "--duration", "0.09"]
    subprocess.run(backlog, cwd=ROOT, env=env, check=True, capture_output=True)
    with pipeline.running():
        stamps = sorted(
            p["classify_ts_ms"] for p in _read(pipeline.predictions, PREDICTIONS.decode, expect=90, timeout_s=240)
        )
        window = stamps[20:]  # leave out the start-up
        backlog_rate = (len(window) - 1) / ((window[-1] - window[0]) / 1000)
        fed_from_ms = int(time.time() * 1000)
        feed = [sys.executable, "-m", "services.ingest", "replay", str(posts), "--rate", f"{backlog_rate:.3f}"]
        subprocess.run([*feed, "--duration", "40"], cwd=ROOT, env=env, check=True, capture_output=True)
        fed = [
            p["classify_ts_ms"]
            for p in _read(pipeline.predictions, PREDICTIONS.decode, timeout_s=30)
            if p["classify_ts_ms"] >= fed_from_ms + 15_000
        ]
    sustained = len([t for t in fed if t < fed_from_ms + 40_000]) / 25.0
    return {"classifier_backlog_images_per_s": backlog_rate, "sustained_images_per_s": min(sustained, backlog_rate)}


def run() -> list[Figure]:
    with running("scripts/kafka.sh", "scripts/triton.sh"), tempfile.TemporaryDirectory() as tmp:
        images = _demo_images_server()
        try:
            log_dir = Path(tmp)
            posts = posts_file(log_dir)
            measured = measure_capacity(posts, log_dir)
            capacity = measured["sustained_images_per_s"]
            print(f"capacity {measured}; burst {BURST_FACTOR * capacity:.1f} posts/s for {BURST_S:.0f} s", flush=True)
            results = {}
            for name in ("on", "off", "throttle"):
                results[name] = figures_of(run_mode(name, posts, capacity, log_dir))
                print(name, {k: round(v, 2) for k, v in results[name].items()}, flush=True)
        finally:
            if images is not None:
                images.terminate()
    on, off, throttle = results["on"], results["off"], results["throttle"]
    context = {
        "capacity_images_per_s": capacity,
        **measured,
        "burst": f"{BURST_FACTOR}x for {BURST_S:.0f} s",
        "high_share": HIGH_SHARE,
    }
    return [
        Figure(
            "shed_high_p99_s",
            on["high_p99_s"],
            "s",
            "<= 5",
            {
                **context,
                "noshed_high_p99_s": off["high_p99_s"],
                "throttle_high_p99_s": throttle["high_p99_s"],
                "shed_high_p50_s": on["high_p50_s"],
            },
        ),
        Figure(
            "shed_decode_skipped_pct",
            on["shed_decode_skipped_pct"],
            "%",
            "100 for records with the envelope headers",
            {**context, "shed_records": on["shed"]},
        ),
        Figure("noshed_high_p99_s", off["high_p99_s"], "s", "", context),
        Figure("throttle_high_p99_s", throttle["high_p99_s"], "s", "", context),
        Figure(
            "shed_high_loss_pct",
            on["high_loss_pct"],
            "%",
            "0",
            {
                **context,
                "throttle_high_loss_pct": throttle["high_loss_pct"],
                "noshed_high_loss_pct": off["high_loss_pct"],
            },
        ),
        Figure("throttle_high_loss_pct", throttle["high_loss_pct"], "%", "", context),
        Figure(
            "shed_recovery_s",
            on["recovery_s"],
            "s",
            "<= 30",
            {**context, "noshed_recovery_s": off["recovery_s"], "throttle_recovery_s": throttle["recovery_s"]},
        ),
        Figure(
            "shed_low_kept_pct",
            on["low_kept_pct"],
            "%",
            "as high as the capacity allows",
            {**context, "noshed_low_kept_pct": off["low_kept_pct"], "throttle_low_kept_pct": throttle["low_kept_pct"]},
        ),
    ]


def _demo_images_server() -> subprocess.Popen[bytes] | None:
    try:
        urllib.request.urlopen(f"{IMAGES}/photo-00.jpg", timeout=2).close()
        return None
    except OSError:
        directory = ROOT / ".run" / "demo-images"
        demo_data.write_images(directory)
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "8765", "--bind", "127.0.0.1", "--directory", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        return server


def _read(topic: str, decode: Any, expect: int | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    consumer = Consumer(
        {"bootstrap.servers": "localhost:9092", "group.id": f"bench-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(500, 0.5)
            for message in batch:
                if not message.error():
                    out.append(decode(message.value()))
            if batch:
                quiet_since = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and out and time.monotonic() - quiet_since > 3:
                break
    finally:
        consumer.close()
    return out


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
        values = {}
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


def _in_flight(pipeline: Pipeline) -> float:
    return sum(
        v
        for port in pipeline.ports.values()
        for k, v in _scrape(port).items()
        if k.startswith("tagstream_records_in_flight")
    )


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def _wait_ready(port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"service on {port} not ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
