"""The fetcher against a loopback image server that serves X's renditions: CPU per image on
X-like traffic, the share of the fastest decode bound it reaches, how close it comes to its
connection limit at an internet-like latency, peak memory under slow and oversized responses,
and peak memory of the real service process (`python -m services.fetcher` on Kafka) with
decode bombs in flight.

This process (the image sets, the decoders' rates: `bench/decoders.py`), the image server
(`bench/fetcher_server.py --renditions`), and fetcher processes (`bench/fetcher_load.py`),
which run the service's own `ImagePipeline.handle` over a `Fetcher` and its decode pool, one
per core with one decode thread each (the deployed shape: deploy/k8s gives a replica one CPU).

X-like traffic: 24 originals drawn by `tools/demo_data.py`, half 1200x800 and half larger
(2048x1536, 1536x2048 and 4032x3024; on X about half the photos are at most 1200 wide, a
third up to 2048, a sixth larger), JPEG quality 88; each post's media item carries the
original's width and height, as the API gives them, so the fetcher asks for the `small`
rendition of each (680 on the long side), which the server makes with Pillow (Lanczos,
quality 85). Every request is a distinct URL, so the fetcher's cache never hits.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench import decoders
from bench.fetcher_server import renditions
from bench.figures import Figure
from bench.stack import free_port, machine_load, running
from services.common.avro import TWEETS
from services.common.cpus import available_cpus
from services.common.envelope import Envelope
from services.common.settings import KafkaSettings
from services.fetcher.imaging import to_model_input
from services.fetcher.renditions import RenditionPlanner
from services.fetcher.settings import FetcherSettings
from tools import hostile_images
from tools.demo_data import photo

ROOT = Path(__file__).resolve().parents[1]
#: the originals of the X-like traffic, in the order the server serves them
ORIGINAL_SIZES: tuple[tuple[int, int], ...] = (
    *[(1200, 800)] * 12,
    *[(2048, 1536)] * 4,
    *[(1536, 2048)] * 4,
    *[(4032, 3024)] * 4,
)
MEMORY_PHOTOS = 24  # the memory load's own set: 1200x800, 20 JPEG : 2 PNG : 2 WebP, as before
EFFICIENCY_ROUNDS = 5
IMAGES = 3000  # per round, all processes together
LATENCY_MS = 200
LATENCY_IMAGES = 1600
LATENCY_ROUNDS = 3  # wall-clock rates: the median of three
SERVICE_IMAGES = 4000
SLOW = 500
OVERSIZED = 40
MEMORY_IMAGES = 400
LOOPBACK_ADDRESSES = 19  # 16 hosts for the slow responses, one each for photos, declared and chunked
BOMB_POSTS = 16  # four images each: every other post four bombs refused, then four admitted


def run() -> list[Figure]:
    settings = FetcherSettings()
    cores = available_cpus()
    load_at_start = os.getloadavg()
    # the broker, from the service run to the decode bombs': started once if it is down, stopped after them
    with ExitStack() as broker:
        with tempfile.TemporaryDirectory(prefix="bench-fetcher-") as tmp:
            originals = write_originals(Path(tmp) / "originals")
            served = served_renditions(originals, settings)
            traffic = {
                "originals": [f"{w}x{h}" for w, h in ORIGINAL_SIZES],
                "rendition_asked_for": "small (every original: its short side after fitting 680 is 453-510)",
                "mean_bytes_original": int(statistics.mean(p.stat().st_size for p in originals)),
                "mean_bytes_rendition": int(statistics.mean(len(d) for d in served)),
            }
            full_size = [
                p.read_bytes() for p, size in zip(originals, ORIGINAL_SIZES, strict=True) if size == (1200, 800)
            ]
            decoding = {
                "originals_1200x800": decoders.rates(full_size, settings.image_size),
                "small_renditions_served": decoders.rates(served, settings.image_size),
            }
            bound_name, bound_per_core = decoders.fastest(decoding["small_renditions_served"])
            print(f"decoders, single core, images/s: {decoding}", flush=True)
            sizes = json.dumps(ORIGINAL_SIZES)
            with image_server(Path(tmp) / "originals", with_renditions=True) as port:
                rounds = []
                for _ in range(EFFICIENCY_ROUNDS):
                    run_ = fetcher_per_core(port, 0, IMAGES, sizes)
                    rounds.append(run_ | _efficiency(run_, bound_per_core, cores))
                    print(f"no delay: {rounds[-1]}", flush=True)
                slow_rounds = []
                for _ in range(LATENCY_ROUNDS):
                    slow_rounds.append(fetcher_per_core(port, LATENCY_MS, LATENCY_IMAGES, sizes))
                    print(f"{LATENCY_MS} ms: {slow_rounds[-1]}", flush=True)
                slow = sorted(slow_rounds, key=lambda r: r["images_per_s"])[len(slow_rounds) // 2]
                broker.enter_context(running("scripts/kafka.sh"))
                service = fetcher_service(port, SERVICE_IMAGES)
                print(f"service: {service}", flush=True)
            photos = write_memory_photos(Path(tmp) / "photos")
            with image_server(photos) as port:
                memory = fetcher_load(
                    "memory", "--port", str(port), "--slow", str(SLOW), "--oversized", str(OVERSIZED),
                    "--images", str(MEMORY_IMAGES),
                )  # fmt: skip
        bombs = decode_bombs()
        # the same load with the per-image cap and the shared budget lifted: what issue 16 saw
        uncapped = decode_bombs(
            {"FETCHER_MAX_IMAGE_MEMORY_BYTES": str(2**40), "FETCHER_MAX_DECODE_MEMORY_BYTES": str(2**40)}
        )
    # other work on these cores (1, 5 and 15 minute load averages): CPU per image grows with it,
    # wall-clock rates fall with it
    load = machine_load(load_at_start)
    # EFFICIENCY_ROUNDS is odd: the middle round by CPU per image is the median
    middle = sorted(rounds, key=lambda r: r["cpu_ms_per_image"])[len(rounds) // 2]
    bound_cpu_ms = 1000 / bound_per_core
    connection_limit = cores * settings.max_connections_per_host / (LATENCY_MS / 1000)
    expected = min(bound_per_core * cores, connection_limit)
    per_core_shape = f"{cores} fetcher processes, one decode thread each (one per core, as deployed)"
    return [
        Figure(
            "fetcher_cpu_ms_per_image",
            middle["cpu_ms_per_image"],
            "ms",
            "≤ 3.0",
            {
                "measured": (
                    f"CPU (user + system) of the fetcher processes per image, X-like traffic through renditions "
                    f"at no server delay, {per_core_shape}; median of {EFFICIENCY_ROUNDS} rounds of {IMAGES} images"
                ),
                "event_loop_thread_ms": middle["event_loop_cpu_ms_per_image"],
                "decode_thread_ms": middle["decode_threads_cpu_ms_per_image"],
                "rounds": [r["cpu_ms_per_image"] for r in rounds],
                "run": middle,
                "traffic": traffic,
                "not_counted": "TLS (X serves HTTPS; the loopback server speaks plain HTTP), Kafka and the stream loop",
                "machine_load": load,
            },
        ),
        Figure(
            "fetcher_service_cpu_ms_per_image",
            service["cpu_ms_per_image"],
            "ms",
            "",
            {
                "measured": (
                    "CPU of the fetcher service process (python -m services.fetcher, one decode thread, pinned to "
                    "one core as a replica gets one CPU, its default exactly-once guarantee) per image, reading "
                    "X-like posts from "
                    "a fresh topic on the local Kafka and writing `images`: the same traffic as "
                    "fetcher_cpu_ms_per_image plus Kafka, Avro and the stream loop"
                ),
                **service,
                "machine_load": load,
            },
        ),
        Figure(
            "fetcher_decode_efficiency",
            middle["efficiency"],
            "ratio",
            "≥ 0.85",
            {
                "measured": (
                    f"the fastest decode's CPU per image ({bound_name}, single core, over the renditions the "
                    f"fetcher is served) ÷ the fetcher's CPU per image ({per_core_shape}): the share of the "
                    f"fetcher's CPU the decode bound needs, which is its images/s ÷ the bound's when both keep "
                    f"the cores busy. Median of {EFFICIENCY_ROUNDS} rounds"
                ),
                "bound_method": bound_name,
                "bound_per_core_images_per_s": bound_per_core,
                "bound_cpu_ms_per_image": round(bound_cpu_ms, 3),
                "fetcher_cpu_ms_per_image": middle["cpu_ms_per_image"],
                "rounds": [r["efficiency"] for r in rounds],
                "wall_clock": {
                    "fetcher_images_per_s": middle["images_per_s"],
                    "bound_images_per_s": round(bound_per_core * cores, 1),
                    "ratio": middle["wall_clock_efficiency"],
                    "fetcher_cpu_per_wall_second": middle["cpu_per_wall_second"],
                    "note": "lower when other processes take the cores: the bound's rate is from CPU time",
                },
                "decoders_images_per_s_single_core": decoding,
                "traffic": traffic,
                "machine_load": load,
            },
        ),
        Figure(
            "fetcher_rendition_decode_speedup",
            round(
                decoders.fastest(decoding["small_renditions_served"])[1]
                / decoders.fastest(decoding["originals_1200x800"])[1],
                2,
            ),
            "x",
            "",
            {
                "measured": (
                    "fastest single-core decode of the small renditions the fetcher is served ÷ the same of "
                    "1200x800 originals (the smallest originals of the traffic), measured side by side"
                ),
                "decoders_images_per_s_single_core": decoding,
            },
        ),
        Figure(
            "fetcher_concurrency_efficiency",
            round(slow["images_per_s"] / expected, 3),
            "ratio",
            "≥ 0.9",
            {
                "measured": (
                    f"fetcher images/s with the server answering each request after {LATENCY_MS} ms, all from one "
                    f"host as X serves them, default connection limits, {per_core_shape} ÷ min(decode bound, "
                    f"connections to the host ÷ latency); the median of {LATENCY_ROUNDS} rounds"
                ),
                "fetcher": slow,
                "rounds_images_per_s": [r["images_per_s"] for r in slow_rounds],
                "connections_to_one_host": cores * settings.max_connections_per_host,
                "connection_limit_images_per_s": round(connection_limit, 1),
                "decode_bound_images_per_s": round(bound_per_core * cores, 1),
                "machine_load": load,
            },
        ),
        Figure(
            "fetcher_peak_rss_mb",
            memory["peak_rss_mb"],
            "MB",
            "< 300",
            {
                "measured": (
                    f"peak RSS (VmHWM, its own since exec) of one fetcher process handling at once: "
                    f"{SLOW} responses sending a byte per second (declaring 2 MB), "
                    f"{OVERSIZED // 2} bodies declaring 50 MB, "
                    f"{OVERSIZED - OVERSIZED // 2} chunked 30 MB bodies, and {MEMORY_IMAGES} photos of 1200x800"
                ),
                **memory,
            },
        ),
        Figure(
            "fetcher_decode_bombs_peak_rss_mb",
            bombs["peak_rss_mb"],
            "MB",
            "< 400",
            {
                "measured": (
                    f"peak RSS (VmHWM) of the fetcher service process (python -m services.fetcher, default "
                    f"settings, reading fresh topics on the local Kafka) handling {BOMB_POSTS} posts of four "
                    f"images at once: every other post four decode bombs of 7071x7071 (refused before "
                    f"decoding), the others four images each under the per-image memory cap, which decode "
                    f"in turn within the shared decode budget"
                ),
                **bombs,
                "without_the_memory_caps": {
                    k: uncapped[k] for k in ("peak_rss_mb", "outcomes", "seconds", "still_ready_after")
                },
            },
        ),
    ]


def write_originals(directory: Path) -> list[Path]:
    directory.mkdir()
    paths = []
    for i, size in enumerate(ORIGINAL_SIZES):
        path = directory / f"{i:02d}.jpg"
        photo(i, size).save(path, "JPEG", quality=88)
        paths.append(path)
    return paths


def served_renditions(originals: list[Path], settings: FetcherSettings) -> list[bytes]:
    """The renditions the fetcher will be served for each original, made as the server makes them."""
    planner = RenditionPlanner(["pbs.twimg.com"], settings.image_size)
    out = []
    for path, (width, height) in zip(originals, ORIGINAL_SIZES, strict=True):
        chosen = planner.choose("https://pbs.twimg.com/media/x.jpg", width, height)
        assert chosen is not None
        out.append(renditions(path.read_bytes())[chosen.name])
    return out


def write_memory_photos(directory: Path) -> Path:
    directory.mkdir()
    for i in range(MEMORY_PHOTOS):
        image = photo(i)
        if i % 12 == 5:
            image.save(directory / f"{i:02d}.png", "PNG")
        elif i % 12 == 11:
            image.save(directory / f"{i:02d}.webp", "WEBP", quality=85)
        else:
            image.save(directory / f"{i:02d}.jpg", "JPEG", quality=88)
    return directory


def _efficiency(run: dict[str, Any], bound_per_core: float, cores: int) -> dict[str, float]:
    return {
        "efficiency": round((1000 / bound_per_core) / run["cpu_ms_per_image"], 3),
        "wall_clock_efficiency": round(run["images_per_s"] / (bound_per_core * cores), 3),
    }


def fetcher_per_core(port: int, delay_ms: int, images: int, media_sizes: str) -> dict[str, Any]:
    """One fetcher process per core, one decode thread each, timing the same window: a
    process's decode threads share one interpreter lock, so a process per core is how the
    fetcher is deployed (deploy/k8s: one CPU per replica) and how it reaches the cores."""
    cores = available_cpus()
    start_at = time.time() + 8.0  # after every process has imported and warmed up
    args = ("throughput", "--port", str(port), "--delay-ms", str(delay_ms), "--images", str(images // cores))
    runs = fetcher_loads(
        [[*args, "--workers", "1", "--start-at", str(start_at), "--media-sizes", media_sizes] for _ in range(cores)]
    )
    ok: int = sum(run["outcomes"].get("ok", 0) for run in runs)
    starts = [run["started_at"] for run in runs]
    seconds = max(run["ended_at"] for run in runs) - min(starts)

    def per_image(key: str) -> float:
        total: float = sum(run[key] * run["outcomes"].get("ok", 0) for run in runs)
        return round(total / max(ok, 1), 3)

    return {
        "processes": cores,
        "decode_threads_each": 1,
        "images": sum(run["images"] for run in runs),
        "outcomes": dict(sum((Counter(run["outcomes"]) for run in runs), Counter())),
        "seconds": round(seconds, 3),
        "images_per_s": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "cpu_ms_per_image": per_image("cpu_ms_per_image"),
        "event_loop_cpu_ms_per_image": per_image("event_loop_cpu_ms_per_image"),
        "decode_threads_cpu_ms_per_image": per_image("decode_threads_cpu_ms_per_image"),
        "cpu_per_wall_second": round(sum(run["cpu_seconds_per_wall_second"] for run in runs), 2),
        "images_per_s_each": [run["images_per_s"] for run in runs],
        # how far apart the processes began their timed parts (all should meet `start_at`)
        "start_skew_s": round(max(starts) - min(starts), 3),
        "load_average_after": os.getloadavg()[0],
    }


def fetcher_service(port: int, images: int) -> dict[str, Any]:
    """CPU per image of the real service on X-like posts, by thread, from its 500th image to its last
    (the local broker must be up)."""
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        tweets, output = _fresh_topics("tweets", "images")
        _produce_posts(tweets, port, images)
        metrics_port = free_port()
        env = _fetcher_env(
            tweets,
            output,
            metrics_port,
            FETCHER_RENDITION_HOSTS='["127.0.0.1"]',
            FETCHER_DECODE_WORKERS="1",
            LOG_LEVEL="WARNING",
        )
        # One core, as a replica gets one CPU: unpinned, its event loop and decode thread run
        # on two cores at once and hand the interpreter lock across them, which costs CPU a
        # one-CPU replica does not spend.
        one_core = max(os.sched_getaffinity(0))
        log_path = Path(tmp) / "fetcher.log"
        with _fetcher_process(env, metrics_port, log_path, ("taskset", "-c", str(one_core))) as fetcher:
            started = time.monotonic()
            while sum(_fetch_results(metrics_port).values()) < 500:
                if fetcher.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError(f"fetcher ended or stalled: {log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            threads_before, done_before, at_first = (
                _thread_cpu(fetcher.pid),
                _fetch_results(metrics_port),
                time.monotonic(),
            )
            done = done_before
            while sum(done.values()) < images and time.monotonic() - at_first < 300:
                time.sleep(0.2)
                done = _fetch_results(metrics_port)
            threads_after, elapsed = _thread_cpu(fetcher.pid), time.monotonic() - at_first
            names = _python_thread_names(fetcher.pid)
    counted = sum(done.values()) - sum(done_before.values())
    by_thread: dict[str, float] = {}
    for tid, (name, seconds) in threads_after.items():
        kind = _thread_kind(names.get(tid, name))
        by_thread[kind] = by_thread.get(kind, 0.0) + seconds - threads_before.get(tid, (name, 0.0))[1]
    return {
        "images": counted,
        "outcomes": done,
        "images_per_s": round(counted / elapsed, 1),
        "cpu_ms_per_image": round(1000 * sum(by_thread.values()) / counted, 3),
        "cpu_ms_per_image_by_thread": {k: round(1000 * v / counted, 3) for k, v in sorted(by_thread.items())},
    }


def _produce_posts(topic: str, port: int, count: int) -> None:
    """X-like posts of one photo each, on the image server's /media/ URLs, with the originals' sizes."""
    producer = Producer({"bootstrap.servers": KafkaSettings().bootstrap_servers, "linger.ms": 20})
    now = int(time.time() * 1000)
    headers: list[tuple[str, str | bytes | None]] = [*Envelope(1, now).headers()]
    for n in range(count):
        width, height = ORIGINAL_SIZES[n % len(ORIGINAL_SIZES)]
        tweet_id = str(1_950_000_000_000_000_000 + n)
        post = {
            "tweet_id": tweet_id, "text": "bench", "author_id": "1",
            "author_username": "bench", "created_at": None, "lang": None,
            "post_url": f"https://x.com/bench/status/{n}",
            "media": [{"media_key": f"3_{n}", "type": "photo", "url": f"http://127.0.0.1:{port}/media/0/{n}",
                       "width": width, "height": height}],
            "matching_rules": [], "priority": 1, "ingest_ts_ms": now,
        }  # fmt: skip
        producer.produce(topic, TWEETS.encode(post), key=tweet_id, headers=headers)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("posts not delivered")


def _thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """CPU seconds so far of each thread of `pid`, by thread id, with the thread's name."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        out[task.name] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def _python_thread_names(pid: int) -> dict[str, str]:
    """Python's names of the threads of `pid` by thread id, as py-spy reads them (Linux knows
    them all as "python"); empty when py-spy cannot look."""
    try:
        dump = subprocess.run(
            [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r'^Thread (?:0x[0-9A-Fa-f]+ )?\(?(\d+)\)?[^"\n]*"([^"]+)"', dump, re.MULTILINE))


def _thread_kind(name: str) -> str:
    """librdkafka's threads are rdk:*, the decode pool's decode_N, the event loop MainThread; the
    rest are Python's helpers (confluent-kafka's asyncio threads, the delivery-report poller)."""
    if name.startswith("rdk:"):
        return "librdkafka"
    if name.startswith("decode"):
        return "decode thread"
    if name == "MainThread":
        return "event loop"
    return "other Python threads"


def fetcher_load(*args: str) -> dict[str, Any]:
    return fetcher_loads([list(args)])[0]


def fetcher_loads(arg_lists: list[list[str]]) -> list[dict[str, Any]]:
    """Run one fetcher load process per argument list, all at once; their figures."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.fetcher_load", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arg_lists
    ]
    results = []
    for args, process in zip(arg_lists, processes, strict=True):
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"fetcher load {args} failed: {stderr[-2000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def bomb_files(directory: Path) -> dict[str, int]:
    """The decode bombs, then images just under the default per-image memory cap (each still
    decodes to about 150 MiB); their sizes in bytes."""
    settings = FetcherSettings()
    admitted = {
        "4-grey-16bit-3900.png": hostile_images.png_16bit_grey_bomb(3900, 3900),
        "5-palette-transparency-4200.png": hostile_images.png_palette_transparency_bomb(4200, 4200),
        "6-one-colour-5600.gif": hostile_images.gif_bomb(5600, 5600),
        "7-webp-lossless-3000.webp": hostile_images.webp_lossless_bomb(3000, 3000),
    }
    files = {f"{n}-{name}": make() for n, (name, make) in enumerate(hostile_images.DECODE_BOMBS.items())}
    files.update(admitted)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    for data in admitted.values():  # the load is what it says: these pass the cap
        to_model_input(data, settings.image_size, settings.max_pixels, settings.max_image_memory_bytes)
    return {name: len(data) for name, data in files.items()}


def decode_bombs(overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Peak RSS of a real fetcher process with decode bombs in flight (the local broker must be
    up); `overrides` are added to its environment."""
    with tempfile.TemporaryDirectory(prefix="bench-bombs-") as tmp:
        directory = Path(tmp) / "files"
        directory.mkdir()
        sizes = bomb_files(directory)
        tweets, images = _fresh_topics("tweets", "images")
        metrics_port = free_port()
        env = _fetcher_env(tweets, images, metrics_port, **(overrides or {}))
        log_path = Path(tmp) / "fetcher.log"
        with image_server(directory) as port, _fetcher_process(env, metrics_port, log_path) as fetcher:
            before = _status_mb(fetcher.pid, "VmRSS")
            started = time.monotonic()
            _replay(Path(tmp), tweets, port)
            images_total = 4 * BOMB_POSTS
            outcomes: dict[str, float] = {}
            sampled = 0.0
            while sum(outcomes.values()) < images_total:
                if fetcher.poll() is not None or time.monotonic() - started > 600:
                    raise RuntimeError(f"fetcher ended or stalled: {log_path.read_text()[-2000:]}")
                sampled = max(sampled, _status_mb(fetcher.pid, "VmRSS"))
                outcomes = _fetch_results(metrics_port)
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            peak = _status_mb(fetcher.pid, "VmHWM")
            _wait_http(f"http://127.0.0.1:{metrics_port}/healthz", fetcher)  # still up and ready
    settings = FetcherSettings()
    return {
        "peak_rss_mb": peak,
        "peak_rss_sampled_mb": sampled,
        "rss_before_load_mb": before,
        "outcomes": outcomes,
        "seconds": round(elapsed, 1),
        "still_ready_after": True,
        "files_bytes": sizes,
        "settings": {
            "max_pixels": settings.max_pixels,
            "max_image_memory_bytes": settings.max_image_memory_bytes,
            "max_decode_memory_bytes": settings.max_decode_memory_bytes,
            "decode_workers": settings.decode_workers,
        },
    }


def _fetcher_env(tweets: str, output: str, metrics_port: int, **extra: str) -> dict[str, str]:
    """The fetcher service's environment (added to ours) for a run reading `tweets` and writing
    `output` with a group of its own, images from the loopback server, shedding off; `extra` added."""
    return {
        "FETCHER_INPUT_TOPIC": tweets,
        "FETCHER_OUTPUT_TOPIC": output,
        "FETCHER_GROUP_ID": f"bench-fetcher-{uuid.uuid4().hex[:8]}",
        "FETCHER_METRICS_PORT": str(metrics_port),
        "FETCHER_ALLOW_PRIVATE_NETWORKS": "true",  # the image server is on loopback
        "FETCHER_SHEDDING_ENABLED": "false",
        "FETCHER_DOWNSTREAM_GROUP": "",
        **extra,
    }


@contextmanager
def _fetcher_process(
    env: dict[str, str], metrics_port: int, log_path: Path, prefix: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.fetcher` (after the command `prefix`, if any) with `env` added and its
    stderr in `log_path`, ready on its /healthz; stopped afterwards."""
    with log_path.open("wb") as log:
        fetcher = subprocess.Popen(
            [*prefix, sys.executable, "-m", "services.fetcher"], cwd=ROOT, env={**os.environ, **env}, stderr=log
        )
        try:
            _wait_http(f"http://127.0.0.1:{metrics_port}/healthz", fetcher)
            yield fetcher
        finally:
            fetcher.terminate()
            try:
                fetcher.wait(30)
            except subprocess.TimeoutExpired:
                fetcher.kill()
                fetcher.wait()


def _fresh_topics(*names: str) -> list[str]:
    unique = [f"bench-{name}-{uuid.uuid4().hex[:8]}" for name in names]
    admin = AdminClient(KafkaSettings().client_config())
    for future in admin.create_topics([NewTopic(name, num_partitions=1) for name in unique]).values():
        future.result(timeout=30)
    return unique


def _replay(directory: Path, topic: str, port: int) -> None:
    """BOMB_POSTS posts of four photos each, produced by the ingest service's own replay."""
    path = directory / "posts.jsonl"
    with path.open("w") as f:
        for post in range(BOMB_POSTS):
            keys = [f"3_{post * 4 + i}" for i in range(4)]
            media = [
                {"media_key": key, "type": "photo", "url": f"http://127.0.0.1:{port}/img/0/{post * 4 + i}"}
                for i, key in enumerate(keys)
            ]
            payload = {
                "data": {"id": str(1_900_000_000_000_000_000 + post), "text": "bombs", "author_id": "1",
                         "attachments": {"media_keys": keys}},
                "includes": {"media": media, "users": [{"id": "1", "username": "bench", "name": "bench"}]},
                "matching_rules": [{"id": "1", "tag": "targeted:cats"}],
            }  # fmt: skip
            f.write(json.dumps(payload) + "\n")
    env = {**os.environ, "INGEST_OUTPUT_TOPIC": topic, "INGEST_DLQ_TOPIC": topic + ".dlq"}
    command = [sys.executable, "-m", "services.ingest", "replay", str(path), "--rate", "0"]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)


def _fetch_results(port: int) -> dict[str, float]:
    """tagstream_fetch_results_total by reason ("ok" for images that were not refused)."""
    results: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("tagstream_fetch_results_total{"):
                labels, _, value = line.rpartition(" ")
                reason = labels.split('reason="', 1)[1].split('"', 1)[0] or "ok"
                results[reason] = results.get(reason, 0.0) + float(value)
    return results


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for process {pid}")


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready") from None
            time.sleep(0.3)


@contextmanager
def image_server(directory: Path, with_renditions: bool = False) -> Iterator[int]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.fetcher_server", "--dir", str(directory), "--port", str(port),
         "--addresses", str(LOOPBACK_ADDRESSES), *(["--renditions"] if with_renditions else [])],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the image server did not start")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
