"""The prediction cache on a replay where 30 % of posts are reposts of earlier posts' media.

The real classifier process reads `images` records written to a fresh topic at a steady rate,
once with the prediction cache on (its defaults) and once off, against a Triton of the
benchmark's own serving the do-nothing model, so Triton's own counters see this classifier and
nothing else. Each record's pixels are encoded from its image as the fetcher encodes them (JPEG,
the default), a repost's anew: the same pixels must give the same wire bytes, which is what the
cache keys on. Measured: the share of images served without an inference of their own (a hit,
or a share of an inference under way), and the images and requests Triton was spared.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, Producer

from services.common import pixels
from services.common.avro import IMAGES, PREDICTIONS
from services.common.envelope import Envelope
from tests.integration.processes import Triton, metric, wait_http

from .bench_classifier import fresh_topics, sample_pixels
from .figures import Figure
from .stack import ROOT, cpu_seconds, free_port, machine_load, running

POSTS = 1500
REPOST_SHARE = 0.30
POSTS_PER_S = 150.0
SEED = 19
MODEL = "noop"


def repost_plan(posts: int, repost_share: float, seed: int) -> list[int]:
    """The image each post carries: `round(posts * repost_share)` posts, never the first, are
    reposts carrying the image of an earlier post picked at random; the others a new image."""
    rng = random.Random(seed)
    reposts = set(rng.sample(range(1, posts), round(posts * repost_share)))
    plan: list[int] = []
    originals = 0
    for post in range(posts):
        if post in reposts:
            plan.append(plan[rng.randrange(post)])
        else:
            plan.append(originals)
            originals += 1
    return plan


def distinct_images(count: int, bases: list[bytes]) -> list[npt.NDArray[np.uint8]]:
    """`count` different 224x224 photos: the drawn ones, each rolled by its own offsets."""
    arrays = [np.frombuffer(b, np.uint8).reshape(224, 224, 3) for b in bases]
    return [
        np.roll(
            arrays[i % len(arrays)], shift=(7 * (i // len(arrays)) % 224, 3 * (i // len(arrays)) % 224), axis=(0, 1)
        )
        for i in range(count)
    ]


def records(plan: list[int], images: list[npt.NDArray[np.uint8]]) -> list[tuple[str, bytes]]:
    """(key, `images` record) per post; each record's pixels encoded from its image anew."""
    now = int(time.time() * 1000)
    out = []
    for post, image in enumerate(plan):
        fmt, data = pixels.encode(images[image].tobytes(), 224, "jpeg")
        key = str(9_000_000 + post)
        record = {
            "origin": {
                "tweet_id": key, "media_key": f"3_{post}", "image_url": f"https://pbs.example/{image}.jpg",
                "post_url": f"https://x.com/i/web/status/{key}", "text": "", "author_username": None,
                "priority": 1, "ingest_ts_ms": now,
            },
            "fetch_ts_ms": now, "source_width": 448, "source_height": 336,
            "source_format": "JPEG", "pixel_format": fmt, "height": 224, "width": 224, "pixels": data,
        }  # fmt: skip
        out.append((key, IMAGES.encode(record)))
    return out


def replay(triton: Triton, encoded: list[tuple[str, bytes]], cache: bool) -> dict[str, Any]:
    """One classifier run over the replay, written at POSTS_PER_S while it runs."""
    source, sink = fresh_topics("bench")
    port = free_port()
    env = {
        **os.environ,
        "CLASSIFIER_INPUT_TOPIC": source, "CLASSIFIER_OUTPUT_TOPIC": sink,
        "CLASSIFIER_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "CLASSIFIER_MODEL_NAME": MODEL, "CLASSIFIER_METRICS_PORT": str(port),
        "CLASSIFIER_TRITON_URL": triton.grpc_url, "CLASSIFIER_SHEDDING_ENABLED": "false", "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    if not cache:
        env["CLASSIFIER_PREDICTION_CACHE_TTL_S"] = "0"
    triton_metrics = f"http://localhost:{triton.env['METRICS_PORT']}/metrics"
    classifier_metrics = f"http://127.0.0.1:{port}/metrics"
    model = f'model="{MODEL}"'
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "services.classifier"], cwd=ROOT, env=env, stderr=log)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 120, process)  # the model's labels are read by then
            inferred_before = metric(triton_metrics, "nv_inference_count", model)
            requests_before = metric(triton_metrics, "nv_inference_request_success", model)
            cpu_before = cpu_seconds(pids=(process.pid,))
            _write_steadily(source, encoded)
            arrived = _count(sink, len(encoded), timeout_s=120)
            cpu = cpu_seconds(pids=(process.pid,)) - cpu_before
            lookups = {
                how: metric(classifier_metrics, "tagstream_classifier_cache_lookups_total", f'result="{how}"')
                for how in ("hit", "coalesced", "miss")
            }
            inferred = metric(triton_metrics, "nv_inference_count", model) - inferred_before
            requests = metric(triton_metrics, "nv_inference_request_success", model) - requests_before
        finally:
            process.terminate()
            process.wait(30)
    if arrived < len(encoded):
        raise RuntimeError(f"only {arrived} of {len(encoded)} predictions arrived")
    return {
        "predictions": arrived,
        "triton_images": int(inferred),
        "triton_requests": int(requests),
        "lookups": {how: int(n) for how, n in lookups.items()},
        "classifier_cpu_ms_per_image": round(1000 * cpu / len(encoded), 3),
    }


def _write_steadily(topic: str, encoded: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": "localhost:9092", "linger.ms": 5})
    headers: list[tuple[str, str | bytes | None]] = [*Envelope(1, int(time.time() * 1000)).headers()]
    started = time.monotonic()
    for n, (key, value) in enumerate(encoded):
        delay = started + n / POSTS_PER_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, value, key=key, headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0


def _count(topic: str, expected: int, timeout_s: float) -> int:
    consumer = Consumer(
        {"bootstrap.servers": "localhost:9092", "group.id": f"bench-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if not message.error():
                    seen.add(PREDICTIONS.decode(message.value())["origin"]["tweet_id"])
    finally:
        consumer.close()
    return len(seen)


def run() -> list[Figure]:
    load_at_start = os.getloadavg()
    plan = repost_plan(POSTS, REPOST_SHARE, SEED)
    images = distinct_images(max(plan) + 1, sample_pixels(32))
    encoded = records(plan, images)
    reposts = POSTS - (max(plan) + 1)
    with running("scripts/kafka.sh"), tempfile.TemporaryDirectory(prefix="bench-cache-") as work:
        repository = Path(work) / "models"
        shutil.copytree(ROOT / "model_repository" / "cpu" / MODEL, repository / MODEL)
        triton = Triton(Path(work) / "triton", repository, ready_model=MODEL)
        triton.start()
        try:
            on = replay(triton, encoded, cache=True)
            off = replay(triton, encoded, cache=False)
        finally:
            triton.stop()
    load = machine_load(load_at_start)
    print(f"cache on: {on}\ncache off: {off}", flush=True)
    served = on["lookups"]["hit"] + on["lookups"]["coalesced"]
    context = {
        "posts": POSTS,
        "reposts": reposts,
        "posts_per_s": POSTS_PER_S,
        "pixels": "JPEG q90, each record encoded anew from its image",
        "model": f"{MODEL} on a Triton of the benchmark's own",
        "cache_on": on,
        "cache_off": off,
        "machine_load": load,
    }
    return [
        Figure(
            "classifier_repost_cache_hit_pct",
            round(100 * served / POSTS, 2),
            "%",
            f"= the reposts' share ({100 * reposts / POSTS:.0f} %)",
            {"what": "images served without an inference of their own: hits and copies that shared one", **context},
        ),
        Figure(
            "classifier_repost_triton_images_saved_pct",
            round(100 * (off["triton_images"] - on["triton_images"]) / off["triton_images"], 2),
            "%",
            f"= the reposts' share ({100 * reposts / POSTS:.0f} %)",
            {
                "what": "images Triton scored with the cache off less those with it on, of those off (Triton's count)",
                "triton_requests_saved_pct": round(
                    100 * (off["triton_requests"] - on["triton_requests"]) / off["triton_requests"], 2
                ),
                **context,
            },
        ),
    ]


if __name__ == "__main__":
    for figure in run():
        print(figure)
