"""Classifier throughput against Triton alone, and the wire format of `images`.

For each model (the stand-in ResNet50, and `noop`, which costs nothing) and the same batch
size and requests in flight:
- Triton alone: a gRPC client sending ready-made batches of uint8 pixels;
- the pipeline: the real classifier process reading N pre-produced `images` records from
  Kafka and writing `predictions`, its rate taken from the predictions' own classify
  timestamps (first to last), so start-up is not counted.
Both share this machine's cores with the broker and Triton, as they do in the stack.
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from confluent_kafka import Consumer, Producer

from services.common import pixels
from services.common.avro import IMAGES, PREDICTIONS
from services.common.cpus import available_cpus
from services.common.envelope import Envelope
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.stages import TopicSpec
from services.fetcher.imaging import to_model_input
from tools import demo_data

from .figures import Figure
from .stack import KAFKA_PROCESSES, ROOT, TRITON_PROCESSES, cpu_seconds, free_port, machine_load, running

TRITON = "localhost:8001"
ROUNDS = 2


def sample_pixels(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        demo_data.photo(i, (1200, 800)).save(buffer, "JPEG", quality=88)
        out.append(to_model_input(buffer.getvalue(), 224, 10**8).pixels)
    return out


async def triton_alone(
    model: str, images: list[bytes], n: int, batch: int, in_flight: int
) -> tuple[float, dict[str, float]]:
    """Images/s of `n` images sent as uint8 batches of `batch`, `in_flight` requests at once,
    and the CPU milliseconds per image of Triton and of this client."""
    client = grpcclient.InferenceServerClient(TRITON)
    arrays = [np.frombuffer(p, np.uint8).reshape(224, 224, 3) for p in images]
    stacked = np.stack([arrays[i % len(arrays)] for i in range(batch)])
    requests = n // batch

    async def one() -> None:
        inputs = [grpcclient.InferInput("image", list(stacked.shape), "UINT8")]
        inputs[0].set_data_from_numpy(stacked)
        await client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("scores")])

    await one()  # warm-up
    slots = asyncio.Semaphore(in_flight)

    async def limited() -> None:
        async with slots:
            await one()

    cpu_before = _parts_cpu(client=os.getpid())
    started = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(requests)))
    elapsed = time.perf_counter() - started
    cpu = _cpu_ms_per_image(cpu_before, _parts_cpu(client=os.getpid()), requests * batch)
    await client.close()
    return requests * batch / elapsed, cpu


def fresh_topics(prefix: str) -> tuple[str, str]:
    """An `images` and a `predictions` topic of this run's own, created now, 3 partitions each:
    `<prefix>-images-<random>` and `<prefix>-predictions-<random>`."""
    suffix = uuid.uuid4().hex[:8]
    source, sink = f"{prefix}-images-{suffix}", f"{prefix}-predictions-{suffix}"
    ensure_topics(KafkaSettings(), [TopicSpec(source, 3), TopicSpec(sink, 3)])
    return source, sink


def produce_images(topic: str, images: list[bytes], n: int, encoding: pixels.Encoding) -> int:
    """Write `n` image records; return the mean bytes of their pixels."""
    producer = Producer({"bootstrap.servers": "localhost:9092", "linger.ms": 20, "compression.type": "lz4"})
    encoded = [pixels.encode(p, 224, encoding) for p in images]
    now = int(time.time() * 1000)
    envelope: list[tuple[str, str | bytes | None]] = [*Envelope(1, now).headers()]
    for i in range(n):
        fmt, data = encoded[i % len(encoded)]
        key = str(1_000_000 + i)
        record = {
            "origin": {
                "tweet_id": key, "media_key": f"3_{i}", "image_url": "https://pbs.example/a.jpg",
                "post_url": "https://x.com/i/web/status/1", "text": "", "author_username": None, "priority": 1,
                "ingest_ts_ms": now,
            },
            "fetch_ts_ms": now, "source_width": 1200, "source_height": 800,
            "source_format": "JPEG", "pixel_format": fmt, "height": 224, "width": 224, "pixels": data,
        }  # fmt: skip
        while True:
            try:
                producer.produce(topic, IMAGES.encode(record), key=key, headers=envelope)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    return int(statistics.mean(len(data) for _, data in encoded))


def classifier_run(
    model: str, images: list[bytes], n: int, batch: int, in_flight: int, encoding: str
) -> tuple[float, dict[str, float]]:
    """Images/s of the classifier process over `n` pre-produced records, and the CPU
    milliseconds per image of the classifier, Triton and the broker, both taken between its
    first and its last prediction."""
    source, sink = fresh_topics("bench")
    produce_images(source, images, n, encoding)  # type: ignore[arg-type]
    port = free_port()
    env = {
        **os.environ,
        "CLASSIFIER_INPUT_TOPIC": source, "CLASSIFIER_OUTPUT_TOPIC": sink,
        "CLASSIFIER_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "CLASSIFIER_MODEL_NAME": model, "CLASSIFIER_METRICS_PORT": str(port), "CLASSIFIER_TRITON_URL": TRITON,
        "CLASSIFIER_MAX_BATCH_SIZE": str(batch), "CLASSIFIER_MAX_REQUESTS_IN_FLIGHT": str(in_flight),
        "CLASSIFIER_MAX_IN_FLIGHT": str(max(128, 4 * batch * in_flight)), "LOG_LEVEL": "WARNING",
        "CLASSIFIER_SHEDDING_ENABLED": "false",  # a throughput run: the backlog is the point
        # 16 images, repeated: every copy is inferred, as distinct images would be
        "CLASSIFIER_PREDICTION_CACHE_TTL_S": "0",
    }  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "services.classifier"], cwd=ROOT, env=env, stderr=log)
        try:
            stamps, cpu = _classify_stamps(sink, n, timeout_s=60 + n / 5, pid=process.pid)
        finally:
            process.terminate()
            process.wait(30)
    if len(stamps) < n:
        raise RuntimeError(f"only {len(stamps)} of {n} predictions arrived")
    stamps.sort()
    return (n - 1) / ((stamps[-1] - stamps[0]) / 1000), cpu


def _parts_cpu(**processes: int) -> dict[str, float]:
    """CPU seconds so far of Triton, the broker, and each named process id."""
    parts = {"triton": cpu_seconds(TRITON_PROCESSES), "broker": cpu_seconds(KAFKA_PROCESSES)}
    return parts | {name: cpu_seconds(pids=(pid,)) for name, pid in processes.items()}


def _cpu_ms_per_image(before: dict[str, float], after: dict[str, float], images: int) -> dict[str, float]:
    return {part: round(1000 * (after[part] - before[part]) / images, 3) for part in before}


def _median_parts(runs: list[dict[str, float]]) -> dict[str, float]:
    return {part: statistics.median(run[part] for run in runs) for part in runs[0]}


def _with_bound(parts: dict[str, float]) -> dict[str, float]:
    """The parts' CPU ms per image, and the images/s this machine's cores would allow if they
    did nothing else (cores * 1000 / the sum): what the two rates compared can reach at most."""
    total = sum(parts.values())
    return parts | {"total": round(total, 3), "cpu_bound_images_per_s": round(available_cpus() * 1000 / total)}


def _classify_stamps(topic: str, n: int, timeout_s: float, pid: int) -> tuple[list[int], dict[str, float]]:
    """The predictions' classify timestamps, and the CPU ms per image of each part from the first to the last."""
    consumer = Consumer(
        {"bootstrap.servers": "localhost:9092", "group.id": f"bench-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    at_first: dict[str, float] = {}
    try:
        while len(stamps) < n and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if not message.error():
                    if not stamps:
                        at_first = _parts_cpu(classifier=pid)
                    stamps.append(PREDICTIONS.decode(message.value())["classify_ts_ms"])
        cpu = _cpu_ms_per_image(at_first, _parts_cpu(classifier=pid), len(stamps)) if stamps else {}
    finally:
        consumer.close()
    return stamps, cpu


def jpeg_decode_ms(images: list[bytes]) -> float:
    encoded = [pixels.encode(p, 224, "jpeg")[1] for p in images]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for data in encoded:
            pixels.decode(pixels.JPEG, data, 224, 224)
    return (time.perf_counter() - started) * 1000 / (rounds * len(encoded))


def run() -> list[Figure]:
    load_at_start = os.getloadavg()
    images = sample_pixels(16)
    with running("scripts/kafka.sh", "scripts/triton.sh"):
        results: dict[str, Any] = {}
        for model, n, batch, in_flight in (("resnet50", 160, 8, 2), ("noop", 3000, 16, 4)):
            # Alternated, twice, medians kept: both sides see the same drift of a shared machine.
            alone_runs, pipeline_runs, alone_cpu, pipeline_cpu = [], [], [], []
            for _ in range(ROUNDS):
                rate, cpu = asyncio.run(triton_alone(model, images, n, batch, in_flight))
                alone_runs.append(rate)
                alone_cpu.append(cpu)
                rate, cpu = classifier_run(model, images, n, batch, in_flight, "raw")
                pipeline_runs.append(rate)
                pipeline_cpu.append(cpu)
            alone, pipeline = statistics.median(alone_runs), statistics.median(pipeline_runs)
            alone_parts = _with_bound(_median_parts(alone_cpu))
            pipeline_parts = _with_bound(_median_parts(pipeline_cpu))
            results[model] = {
                "alone": alone, "pipeline": pipeline, "n": n, "batch": batch, "in_flight": in_flight,
                "alone_runs": alone_runs, "pipeline_runs": pipeline_runs,
                "cpu_ms_per_image": _median_parts(pipeline_cpu)["classifier"],
                "alone_cpu_rounds": alone_cpu,
                "pipeline_cpu_rounds": pipeline_cpu,
                "cpu_ms_per_image_alone": alone_parts,
                "cpu_ms_per_image_pipeline": pipeline_parts,
                # The ratio the two sides' CPU per image allows when both are CPU-bound on these
                # cores: the pipeline also feeds the broker and runs Kafka and Avro on them.
                "efficiency_ceiling_on_this_machine": round(alone_parts["total"] / pipeline_parts["total"], 3),
            }  # fmt: skip
            print(f"{model}: Triton alone {alone_runs}/s, classifier {pipeline_runs}/s", flush=True)
        noop = results["noop"]
        jpeg_rate, jpeg_cpu = classifier_run("noop", images, noop["n"], noop["batch"], noop["in_flight"], "jpeg")
        print(f"noop with JPEG pixels: classifier {jpeg_rate:.1f}/s", flush=True)
    # other work on these cores (1, 5 and 15 minute load averages)
    load = machine_load(load_at_start)
    raw_bytes = len(images[0])
    classifier_cpu = noop["cpu_ms_per_image_pipeline"]["classifier"]
    client_cpu = noop["cpu_ms_per_image_alone"]["client"]
    jpeg_bytes = statistics.mean(len(pixels.encode(p, 224, "jpeg")[1]) for p in images)
    resnet = results["resnet50"]
    return [
        Figure(
            "classifier_pipeline_efficiency",
            resnet["pipeline"] / resnet["alone"],
            "ratio",
            ">= 0.9",
            {"classifier_images_per_s": resnet["pipeline"], "triton_alone_images_per_s": resnet["alone"], **resnet},
        ),
        Figure(
            "classifier_noop_efficiency",
            noop["pipeline"] / noop["alone"],
            "ratio",
            ">= 0.8",
            {"classifier_images_per_s": noop["pipeline"], "triton_alone_images_per_s": noop["alone"], **noop},
        ),
        Figure("classifier_noop_images_per_s", noop["pipeline"], "images/s", "", {"pixels": "raw"}),
        Figure(
            "classifier_overhead_ratio",
            round(classifier_cpu / client_cpu, 3),
            "ratio",
            "≤ 1.3",
            {
                "measured": (
                    f"CPU per image of the classifier process (Kafka in and out, Avro, batching, gRPC, hashtags) ÷ "
                    f"that of a lone Triton gRPC client sending the same batches ({noop['batch']} images of raw "
                    f"uint8 pixels, {noop['in_flight']} requests in flight) to the same do-nothing model; medians "
                    f"of {ROUNDS} alternated rounds in one run"
                ),
                "classifier_cpu_ms_per_image": classifier_cpu,
                "lone_client_cpu_ms_per_image": client_cpu,
                "rounds": [
                    round(p["classifier"] / a["client"], 3)
                    for p, a in zip(noop["pipeline_cpu_rounds"], noop["alone_cpu_rounds"], strict=True)
                ],
                "cpu_ms_per_image_pipeline": noop["cpu_ms_per_image_pipeline"],
                "cpu_ms_per_image_alone": noop["cpu_ms_per_image_alone"],
                "machine_load": load,
            },
        ),
        Figure(
            "classifier_cpu_ms_per_image",
            noop["cpu_ms_per_image"],
            "ms",
            "",
            {"model": "noop", "pixels": "raw", "what": "classifier process CPU, first to last prediction"},
        ),
        Figure("classifier_resnet50_images_per_s", resnet["pipeline"], "images/s", "", {"model": "stand-in weights"}),
        Figure(
            "classifier_noop_jpeg_images_per_s",
            jpeg_rate,
            "images/s",
            "",
            {"pixels": "JPEG q90", "cpu_ms_per_image": jpeg_cpu["classifier"], "cpu_ms_per_image_pipeline": jpeg_cpu},
        ),
        Figure("images_pixels_bytes_raw", raw_bytes, "bytes", "", {"size": "224x224x3"}),
        Figure(
            "images_pixels_bytes_jpeg",
            jpeg_bytes,
            "bytes",
            "",
            {"quality": pixels.JPEG_QUALITY, "note": "drawn demo photos compress better than real ones"},
        ),
        Figure("images_jpeg_decode_ms", jpeg_decode_ms(images), "ms/image", "", {"cores": 1}),
    ]


if __name__ == "__main__":
    for figure in run():
        print(figure)
