"""The fetcher against a loopback image server: speed-up over a sequential loop, share of the
machine's decode bound it reaches, peak memory under slow and oversized responses, and peak
memory of the real service process (`python -m services.fetcher` on Kafka) with decode bombs
in flight.

This process (the image set, the decode bound, the sequential baseline), the image server
(`bench/fetcher_server.py`), and fetcher processes (`bench/fetcher_load.py`), which run the
service's own `ImagePipeline.handle` over a `Fetcher` and its decode pool: one per core with one
decode thread each for the headline figures (the deployed shape), and for comparison one
process with a thread, or a process, per core.
Images: photos drawn by `tools/demo_data.py`, 1200x800, ten JPEGs (quality 88) for each PNG and
each WebP (quality 85); every request is a distinct URL, so the fetcher's cache never hits.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.figures import Figure
from bench.stack import free_port, running
from services.common.cpus import available_cpus
from services.common.settings import KafkaSettings
from services.fetcher.imaging import to_model_input
from services.fetcher.settings import FetcherSettings
from tools import hostile_images
from tools.demo_data import photo

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = 24
DELAY_MS = 50
EFFICIENCY_ROUNDS = 3
IMAGES = 1500
SEQUENTIAL_IMAGES = 48
SLOW = 500
OVERSIZED = 40
MEMORY_IMAGES = 400
LOOPBACK_ADDRESSES = 19  # 16 hosts for the slow responses, one each for photos, declared and chunked
BOMB_POSTS = 16  # four images each: every other post four bombs refused, then four admitted


def run() -> list[Figure]:
    settings = FetcherSettings()
    with tempfile.TemporaryDirectory(prefix="bench-fetcher-") as tmp:
        files = write_photos(Path(tmp))
        mix = describe(files)
        with image_server(Path(tmp)) as port:
            sequential = sequential_loop(port, DELAY_MS, SEQUENTIAL_IMAGES, settings)
            delayed = fetcher_per_core(port, DELAY_MS, IMAGES)
            # Each run is compared with the bound measured right before and right after it (this
            # machine's speed drifts by 10-20 % within minutes); the median of the rounds is kept.
            bounds = [decode_bound(files, settings)]
            fast_runs = []
            for _ in range(EFFICIENCY_ROUNDS):
                fast_runs.append(fetcher_per_core(port, 0, IMAGES))
                bounds.append(decode_bound(files, settings))
            fast_one_process = fetcher_load(
                "throughput", "--port", str(port), "--delay-ms", "0", "--images", str(IMAGES)
            )
            fast_processes = fetcher_load(
                "throughput", "--port", str(port), "--delay-ms", "0", "--images", str(IMAGES), "--pool", "process"
            )
            memory = fetcher_load(
                "memory", "--port", str(port), "--slow", str(SLOW), "--oversized", str(OVERSIZED),
                "--images", str(MEMORY_IMAGES),
            )  # fmt: skip
    bombs = decode_bombs()
    # the same load with the per-image cap and the shared budget lifted: what issue 16 saw
    uncapped = decode_bombs(
        {"FETCHER_MAX_IMAGE_MEMORY_BYTES": str(2**40), "FETCHER_MAX_DECODE_MEMORY_BYTES": str(2**40)}
    )
    rounds = [
        _round(run["images_per_s"], before["bound_images_per_s"], after["bound_images_per_s"])
        for run, (before, after) in zip(fast_runs, itertools.pairwise(bounds), strict=True)
    ]
    # EFFICIENCY_ROUNDS is odd: the middle round is the median
    middle = sorted(range(len(rounds)), key=lambda i: rounds[i]["efficiency"])[len(rounds) // 2]
    fast, bound = fast_runs[middle], rounds[middle]["bound_images_per_s"]
    return [
        Figure(
            "fetcher_speedup_vs_sequential",
            round(delayed["images_per_s"] / sequential["images_per_s"], 2),
            "x",
            "≥ 50",
            {
                "measured": (
                    f"fetcher images/s (ImagePipeline.handle: download, decode, resize, Avro record; one "
                    f"process per core with one decode thread each, as deploy/k8s runs it) ÷ a sequential "
                    f"loop (requests.Session.get, then the same to_model_input), both against the loopback "
                    f"server answering each request after {DELAY_MS} ms"
                ),
                "fetcher": delayed,
                "sequential": sequential,
                "ceiling_on_this_machine": round(bound / sequential["images_per_s"], 1),
                "ceiling_note": "decode bound ÷ sequential rate: no fetcher can pass it on these cores",
                "images": mix,
            },
        ),
        Figure(
            "fetcher_decode_efficiency",
            rounds[middle]["efficiency"],
            "ratio",
            "≥ 0.8",
            {
                "measured": (
                    "fetcher images/s with no server delay (one process per core, one decode thread each, as "
                    "deploy/k8s runs it) ÷ decode bound; decode bound = single-thread to_model_input images/s "
                    "(reduced-scale JPEG decode, resize, crop) over the same files, times the cores, the mean "
                    "of its measurements right before and right after the fetcher run; the median of "
                    f"{EFFICIENCY_ROUNDS} such rounds"
                ),
                "fetcher": fast,
                "decode_bound_images_per_s": bound,
                "rounds": rounds,
                "decode_bounds": bounds,
                "fetcher_one_process_decode_threads": fast_one_process,
                "fetcher_one_process_decode_processes": fast_processes,
                "note": (
                    "the loopback server runs on the same cores, and the bound assumes every core decodes "
                    "all the time with nothing else to do"
                ),
                "images": mix,
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
                    f"{OVERSIZED - OVERSIZED // 2} chunked 30 MB bodies, and {MEMORY_IMAGES} photos"
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


def write_photos(directory: Path) -> list[Path]:
    paths = []
    for i in range(PHOTOS):
        image = photo(i)
        if i % 12 == 5:
            path = directory / f"{i:02d}.png"
            image.save(path, "PNG")
        elif i % 12 == 11:
            path = directory / f"{i:02d}.webp"
            image.save(path, "WEBP", quality=85)
        else:
            path = directory / f"{i:02d}.jpg"
            image.save(path, "JPEG", quality=88)
        paths.append(path)
    return paths


def describe(files: list[Path]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for path in files:
        kinds[path.suffix[1:]] = kinds.get(path.suffix[1:], 0) + 1
    sizes = [p.stat().st_size for p in files]
    return {"count": len(files), "by_type": kinds, "size": "1200x800", "mean_bytes": sum(sizes) // len(sizes)}


def _round(fetcher: float, bound_before: float, bound_after: float) -> dict[str, float]:
    """One efficiency round: the fetcher's rate against the bound measured around it."""
    bound = (bound_before + bound_after) / 2
    return {
        "fetcher_images_per_s": fetcher,
        "bound_images_per_s": bound,
        "efficiency": round(fetcher / bound, 3),
        "efficiency_against_the_higher_bound": round(fetcher / max(bound_before, bound_after), 3),
    }


def decode_bound(files: list[Path], settings: FetcherSettings, seconds: float = 2.0) -> dict[str, Any]:
    """Single-thread images/s of the fetcher's decode over the image set, times this machine's cores."""
    data = [p.read_bytes() for p in files]
    for blob in data:
        to_model_input(blob, settings.image_size, settings.max_pixels)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or done % len(data):
        to_model_input(data[done % len(data)], settings.image_size, settings.max_pixels)
        done += 1
    per_core = done / (time.perf_counter() - started)
    cores = available_cpus()
    return {
        "per_core_images_per_s": round(per_core, 1),
        "cores": cores,
        "bound_images_per_s": round(per_core * cores, 1),
    }


def sequential_loop(port: int, delay_ms: int, count: int, settings: FetcherSettings) -> dict[str, Any]:
    """The seed's way: one image after the other, download then decode."""
    with requests.Session() as session:
        session.get(f"http://127.0.0.1:{port}/img/0/0", timeout=10).raise_for_status()
        started = time.perf_counter()
        for n in range(count):
            response = session.get(f"http://127.0.0.1:{port}/img/{delay_ms}/{n}", timeout=10)
            response.raise_for_status()
            to_model_input(response.content, settings.image_size, settings.max_pixels)
        elapsed = time.perf_counter() - started
    return {"images": count, "seconds": round(elapsed, 3), "images_per_s": round(count / elapsed, 2)}


def fetcher_per_core(port: int, delay_ms: int, images: int) -> dict[str, Any]:
    """One fetcher process per core, one decode thread each, timing the same window: a
    process's decode threads share one interpreter lock, so a process per core is how the
    fetcher is deployed (deploy/k8s: one CPU per replica) and how it reaches the cores."""
    cores = available_cpus()
    start_at = time.time() + 5.0  # after every process has imported and warmed up
    args = ("throughput", "--port", str(port), "--delay-ms", str(delay_ms), "--images", str(images // cores))
    runs = fetcher_loads([[*args, "--workers", "1", "--start-at", str(start_at)] for _ in range(cores)])
    ok = sum(run["outcomes"].get("ok", 0) for run in runs)
    starts = [run["started_at"] for run in runs]
    seconds = max(run["ended_at"] for run in runs) - min(starts)
    return {
        "processes": cores,
        "decode_threads_each": 1,
        "images": sum(run["images"] for run in runs),
        "seconds": round(seconds, 3),
        "images_per_s": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "cpu_ms_per_image": round(
            sum(run["cpu_ms_per_image"] * run["outcomes"].get("ok", 0) for run in runs) / max(ok, 1), 2
        ),
        "images_per_s_each": [run["images_per_s"] for run in runs],
        # how far apart the processes began their timed parts (all should meet `start_at`)
        "start_skew_s": round(max(starts) - min(starts), 3),
    }


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
    """Peak RSS of a real fetcher process with decode bombs in flight; `overrides` are added to
    its environment."""
    with tempfile.TemporaryDirectory(prefix="bench-bombs-") as tmp, running("scripts/kafka.sh"):
        directory = Path(tmp) / "files"
        directory.mkdir()
        sizes = bomb_files(directory)
        tweets, images = _fresh_topics("tweets", "images")
        metrics_port = free_port()
        env = {
            "FETCHER_INPUT_TOPIC": tweets,
            "FETCHER_OUTPUT_TOPIC": images,
            "FETCHER_GROUP_ID": f"bench-fetcher-{uuid.uuid4().hex[:8]}",
            "FETCHER_METRICS_PORT": str(metrics_port),
            "FETCHER_ALLOW_PRIVATE_NETWORKS": "true",  # the image server is on loopback
            "FETCHER_SHEDDING_ENABLED": "false",
            "FETCHER_DOWNSTREAM_GROUP": "",
            **(overrides or {}),
        }
        with image_server(directory) as port, (Path(tmp) / "fetcher.log").open("wb") as log:
            fetcher = subprocess.Popen(
                [sys.executable, "-m", "services.fetcher"], cwd=ROOT, env={**os.environ, **env}, stderr=log
            )
            try:
                _wait_http(f"http://127.0.0.1:{metrics_port}/healthz", fetcher)
                before = _status_mb(fetcher.pid, "VmRSS")
                started = time.monotonic()
                _replay(Path(tmp), tweets, port)
                images_total = 4 * BOMB_POSTS
                outcomes: dict[str, float] = {}
                sampled = 0.0
                while sum(outcomes.values()) < images_total:
                    if fetcher.poll() is not None or time.monotonic() - started > 600:
                        raise RuntimeError(
                            f"fetcher ended or stalled: {(Path(tmp) / 'fetcher.log').read_text()[-2000:]}"
                        )
                    sampled = max(sampled, _status_mb(fetcher.pid, "VmRSS"))
                    outcomes = _fetch_results(metrics_port)
                    time.sleep(0.2)
                elapsed = time.monotonic() - started
                peak = _status_mb(fetcher.pid, "VmHWM")
                _wait_http(f"http://127.0.0.1:{metrics_port}/healthz", fetcher)  # still up and ready
            finally:
                fetcher.terminate()
                try:
                    fetcher.wait(30)
                except subprocess.TimeoutExpired:
                    fetcher.kill()
                    fetcher.wait()
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
def image_server(directory: Path) -> Iterator[int]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.fetcher_server", "--dir", str(directory), "--port", str(port),
         "--addresses", str(LOOPBACK_ADDRESSES)],
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
