"""Peak memory of the fetcher's decodes, measured in a process of its own so nothing else that
process did can hide or inflate it; prints its figures as JSON.

    python -m tests.fetcher.memory estimate FILE SIZE
        the estimate of `open_image` for FILE and the peak RSS its decode actually added
    python -m tests.fetcher.memory pipeline DIR SETTINGS_JSON
        every file of DIR through `ImagePipeline.handle` at once (one post each, from a loopback
        server in this process), with FetcherSettings(**SETTINGS_JSON): the peak RSS added,
        the outcomes, and the most the decode budget held
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.fetcher.imaging import decode, open_image


def reset_peak() -> int:
    """Start the peak RSS (VmHWM) afresh from now; the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def peak_since(base: int) -> int:
    return _status_kb("VmHWM") * 1024 - base


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def estimate(path: Path, size: int) -> dict[str, Any]:
    data = path.read_bytes()
    _warm_up(size)
    base = reset_peak()
    with open_image(data, size, 10**9) as opened:
        estimated = opened.memory_bytes
        decode(opened, size)
    return {"estimate": estimated, "peak": peak_since(base)}


def _warm_up(size: int) -> None:
    """One small JPEG through the decoders first: libjpeg-turbo and OpenCV set up about 2.7 MB of
    tables and pools at their first call in a process, once, which no decode costs again."""
    from PIL import Image

    from tests.fetcher.support import encode

    with open_image(encode(Image.new("RGB", (64, 48)), "JPEG"), size, 10**9) as opened:
        decode(opened, size)


async def pipeline(files: dict[str, bytes], overrides: dict[str, Any]) -> dict[str, Any]:
    # imported here: `estimate` runs once per case and starts faster without the service's stack
    from services.fetcher.fetch import Fetcher
    from services.fetcher.pipeline import ImagePipeline
    from services.fetcher.settings import FetcherSettings
    from tests.fetcher.support import ImageHost, allow_stand_ins, serving

    settings = FetcherSettings(**overrides)
    held_most = 0
    async with serving(ImageHost(files)) as server:
        with ThreadPoolExecutor(settings.decode_workers) as pool:
            async with Fetcher(settings, address_policy=allow_stand_ins) as fetcher:
                image_pipeline = ImagePipeline(settings, fetcher, pool)
                posts = [_post(n, str(server.make_url(f"/files/{name}"))) for n, name in enumerate(files)]
                base = reset_peak()
                work = asyncio.gather(*(image_pipeline.handle(post) for post in posts))
                while not work.done():
                    held_most = max(held_most, fetcher.decode_budget.used)
                    await asyncio.sleep(0.001)
                peak = peak_since(base)
                outcomes = Counter(getattr(r, "reason", "ok") for results in work.result() for r in results)
    return {"peak": peak, "outcomes": dict(outcomes), "decode_budget_held_most": held_most}


def _post(n: int, url: str) -> dict[str, Any]:
    return {
        "tweet_id": str(n),
        "media": [{"media_key": f"3_{n}", "url": url}],
        "post_url": f"https://x.com/i/status/{n}",
        "text": "",
        "author_username": "someone",
        "priority": 1,
        "ingest_ts_ms": 0,
    }


def main() -> None:
    if sys.argv[1] == "estimate":
        result = estimate(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        files = {p.name: p.read_bytes() for p in sorted(Path(sys.argv[2]).iterdir())}
        result = asyncio.run(pipeline(files, json.loads(sys.argv[3])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
