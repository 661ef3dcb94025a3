"""One fetcher process under one load, for the fetcher benchmark; prints its figures as JSON.

    python -m bench.fetcher_load throughput --port P --delay-ms 50 --images 1500 [--pool thread|process]
        [--workers N] [--start-at T] [--media-sizes "[[w, h], ...]"]
    python -m bench.fetcher_load memory --port P --slow 500 --oversized 40 --images 400

Both drive the service's own code, `ImagePipeline.handle` over a `Fetcher` and a decode pool,
with posts of one image each and at most `FETCHER_MAX_IN_FLIGHT` posts at once, as the stream
loop would; only Kafka is left out. Settings are the defaults except where a load says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.stack import cpu_seconds
from services.common.process import Output
from services.fetcher.fetch import Fetcher
from services.fetcher.pipeline import ImagePipeline
from services.fetcher.settings import FetcherSettings


def post(n: int, url: str, size: tuple[int, int] | None = None) -> dict[str, Any]:
    width, height = size or (None, None)
    return {
        "tweet_id": str(1_800_000_000_000_000_000 + n),
        "media": [{"media_key": f"3_{n}", "url": url, "width": width, "height": height}],
        "post_url": f"https://x.com/bench/status/{n}",
        "text": "bench",
        "author_username": "bench",
        "priority": 1,
        "ingest_ts_ms": int(time.time() * 1000),
    }


@contextmanager
def decode_pool(kind: str, workers: int) -> Iterator[Executor]:
    if kind == "process":
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context) as processes:
            yield processes
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as threads:
            yield threads


async def run_posts(pipeline: ImagePipeline, posts: list[dict[str, Any]], in_flight: int) -> Counter[str]:
    """Handle every post, at most `in_flight` at once; count the outcomes by reason."""
    outcomes: Counter[str] = Counter()
    window = asyncio.Semaphore(in_flight)

    async def one(record: dict[str, Any]) -> None:
        async with window:
            for result in await pipeline.handle(record):
                outcomes["ok" if isinstance(result, Output) else result.reason] += 1

    await asyncio.gather(*(one(p) for p in posts))
    return outcomes


def process_cpu_seconds() -> float:
    """CPU time of this process and of its live children (the decode workers of a process pool)."""
    children = tuple(child.pid for child in multiprocessing.active_children() if child.pid)
    return cpu_seconds(pids=(os.getpid(), *children))


def thread_cpu_seconds(pool: Executor) -> float:
    """CPU seconds so far of the threads of a one-thread pool (0 for a process pool: counted apart)."""
    if not isinstance(pool, ThreadPoolExecutor):
        return 0.0
    return sum(pool.submit(time.thread_time).result() for _ in range(pool._max_workers))


async def throughput(
    port: int,
    delay_ms: int,
    images: int,
    pool_kind: str,
    workers: int | None,
    start_at: float = 0.0,
    media_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Images/s of the pipeline; with `start_at` (a wall-clock time), the timed part waits for
    it after the warm-up, so several processes measure the same window. With `media_sizes` (the
    originals' sizes, in the server's order), the posts are X's: `/media/` URLs whose media items
    carry their sizes, and the fetcher asks the server for renditions as it asks X."""
    settings = FetcherSettings(allow_private_networks=True)  # local mode: the image server is on loopback
    if workers:
        settings.decode_workers = workers
    if media_sizes:
        settings.rendition_hosts = ["127.0.0.1"]
        base = f"http://127.0.0.1:{port}/media/{delay_ms}"
    else:
        base = f"http://127.0.0.1:{port}/img/{delay_ms}"

    def make(n: int) -> dict[str, Any]:
        return post(n, f"{base}/{n}", media_sizes[n % len(media_sizes)] if media_sizes else None)

    with decode_pool(pool_kind, settings.decode_workers) as pool:
        async with Fetcher(settings) as fetcher:
            pipeline = ImagePipeline(settings, fetcher, pool)
            warm_up = [make(n) for n in range(-4 * settings.decode_workers, 0)]
            await run_posts(pipeline, warm_up, settings.max_in_flight)
            posts = [make(n) for n in range(images)]
            await asyncio.sleep(max(0.0, start_at - time.time()))
            started_at = time.time()
            cpu_before, own_before = process_cpu_seconds(), cpu_seconds(pids=(os.getpid(),))
            loop_before, decode_before = time.thread_time(), thread_cpu_seconds(pool)
            started = time.perf_counter()
            outcomes = await run_posts(pipeline, posts, settings.max_in_flight)
            elapsed = time.perf_counter() - started
            loop_cpu, decode_cpu = time.thread_time() - loop_before, thread_cpu_seconds(pool) - decode_before
            cpu = process_cpu_seconds() - cpu_before
            own = cpu_seconds(pids=(os.getpid(),)) - own_before
    ok = max(outcomes["ok"], 1)
    return {
        "images": images,
        "seconds": round(elapsed, 3),
        "images_per_s": round(outcomes["ok"] / elapsed, 1),
        "started_at": started_at,
        "ended_at": started_at + elapsed,
        "outcomes": dict(outcomes),
        "cpu_seconds_per_wall_second": round(cpu / elapsed, 2),
        "cpu_ms_per_image": round(1000 * cpu / ok, 3),
        "event_loop_cpu_ms_per_image": round(1000 * loop_cpu / ok, 3),
        "decode_threads_cpu_ms_per_image": round(1000 * decode_cpu / ok, 3),
        "event_loop_process_cpu_per_wall_second": round(own / elapsed, 2),
        "decode_pool": f"{settings.decode_workers} {'processes' if pool_kind == 'process' else 'threads'}",
        "max_in_flight_posts": settings.max_in_flight,
        "max_connections_per_host": settings.max_connections_per_host,
    }


async def memory(port: int, slow: int, oversized: int, images: int) -> dict[str, Any]:
    """Slow responses spread over 16 loopback hosts (31 or 32 each, under the per-host bound),
    oversized bodies (half declared, half chunked) and ordinary photos, all at once."""
    settings = FetcherSettings(
        allow_private_networks=True,  # local mode: the image server is on loopback
        max_connections=1024,  # room for all the slow responses at once; the default is 256
        total_timeout_s=8.0,  # shorter than the default 20 s, so the run ends sooner
        max_retries=0,  # one attempt, so each slow response is in flight exactly once
    )
    posts = [post(n, f"http://127.0.0.{1 + n % 16}:{port}/trickle/{n}") for n in range(slow)]
    half = oversized // 2
    posts += [post(slow + n, f"http://127.0.0.18:{port}/declared/{n}") for n in range(half)]
    posts += [post(slow + half + n, f"http://127.0.0.19:{port}/chunked/{n}") for n in range(oversized - half)]
    posts += [post(slow + oversized + n, f"http://127.0.0.17:{port}/img/0/{n}") for n in range(images)]
    peak_sampled = 0
    server_stats: dict[str, Any] = {}
    with decode_pool("thread", settings.decode_workers) as pool:
        async with Fetcher(settings) as fetcher:
            pipeline = ImagePipeline(settings, fetcher, pool)
            before_load = _rss_bytes()
            started = time.perf_counter()
            work = asyncio.ensure_future(run_posts(pipeline, posts, len(posts)))
            while not work.done():
                peak_sampled = max(peak_sampled, _rss_bytes())
                if time.perf_counter() - started > settings.total_timeout_s / 2 and not server_stats:
                    server_stats = await _stats(port)  # all slow responses should be open now
                await asyncio.wait([work], timeout=0.1)
            outcomes = work.result()
            elapsed = time.perf_counter() - started
            buffered_at_end = fetcher.budget.used
    return {
        "peak_rss_mb": round(_peak_rss_bytes() / 2**20, 1),
        "peak_rss_sampled_mb": round(peak_sampled / 2**20, 1),
        "rss_before_load_mb": round(before_load / 2**20, 1),
        "slow_responses_open_at_server": server_stats.get("trickles_open"),
        "outcomes": dict(outcomes),
        "seconds": round(elapsed, 2),
        "buffered_bytes_at_end": buffered_at_end,
        "settings": {
            "max_connections": settings.max_connections,
            "max_connections_per_host": settings.max_connections_per_host,
            "total_timeout_s": settings.total_timeout_s,
            "max_bytes": settings.max_bytes,
            "max_buffered_bytes": settings.max_buffered_bytes,
            "cache_max_bytes": settings.cache_max_bytes,
            "decode_workers": settings.decode_workers,
        },
    }


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM), counted from its exec.

    Not `ru_maxrss`: Linux carries the peak of the address space that exec replaces into it,
    and a child started with vfork (as `subprocess` does) replaces its parent's, so a child of
    a benchmark that once held 440 MB reports at least 440 MB, whatever it uses itself.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


async def _stats(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fetcher_load")
    sub = parser.add_subparsers(dest="load", required=True)
    fast = sub.add_parser("throughput")
    fast.add_argument("--port", type=int, required=True)
    fast.add_argument("--delay-ms", type=int, default=0)
    fast.add_argument("--images", type=int, default=1500)
    fast.add_argument("--pool", choices=["thread", "process"], default="thread")
    fast.add_argument("--workers", type=int, default=None, help="decode workers (default: FETCHER_DECODE_WORKERS)")
    fast.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start the timed part at")
    fast.add_argument("--media-sizes", type=json.loads, default=None, help="JSON [[w, h], ...]: X-like posts")
    mem = sub.add_parser("memory")
    mem.add_argument("--port", type=int, required=True)
    mem.add_argument("--slow", type=int, default=500)
    mem.add_argument("--oversized", type=int, default=40)
    mem.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    if args.load == "throughput":
        sizes = [tuple(size) for size in args.media_sizes] if args.media_sizes else None
        result = asyncio.run(
            throughput(args.port, args.delay_ms, args.images, args.pool, args.workers, args.start_at, sizes)
        )
    else:
        result = asyncio.run(memory(args.port, args.slow, args.oversized, args.images))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
