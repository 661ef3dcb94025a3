"""`make demo`: replay the sample stream into the running stack and show the predictions arriving."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

SINK_API = "http://localhost:8080/api/predictions"
ROOT = Path(__file__).resolve().parents[1]
MODEL_INFO = ROOT / "model_repository" / "gpu" / "resnet50" / "1" / "model.json"
# As `make replay`: the local Prometheus scrapes the replay, so ingest's panels show it.
RUN_DIR = ROOT / os.environ.get("RUN_DIR", ".run")
SCRAPED = ["--metrics-port", "0", "--register", str(RUN_DIR / "prometheus" / "targets")]
SCRAPED += ["--prometheus", f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT', '9090')}"]


def model_notice() -> str | None:
    """A warning when the served model has stand-in weights (see model_repository/README.md)."""
    info = json.loads(MODEL_INFO.read_text()) if MODEL_INFO.exists() else {}
    if info.get("meaningful"):
        return None
    return (
        "NOTE: the model has stand-in weights, so these hashtags mean nothing; "
        "`make model FORCE=1` where torchvision can download its weights (model_repository/README.md)."
    )


def expected_images(path: Path) -> set[tuple[str, str]]:
    """(tweet id, media key) of every image in a stream file that is meant to be fetchable."""
    wanted = set()
    for line in path.read_text().splitlines():
        try:
            payload = json.loads(line)
        except ValueError:
            continue
        for media in payload.get("includes", {}).get("media", []):
            url = media.get("url") or media.get("preview_image_url") or ""
            if "/photo-" in url:
                wanted.add((payload["data"]["id"], media["media_key"]))
    return wanted


def fetch_recent(limit: int = 500) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{SINK_API}?limit={limit}", timeout=5) as response:
        items: list[dict[str, Any]] = json.load(response)["items"]
        return items


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo")
    parser.add_argument("--file", type=Path, default=Path("demo/sample_stream.jsonl"))
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    wanted = expected_images(args.file)
    started_ms = int(time.time() * 1000)
    print("open the gallery: http://localhost:8080/ (predictions appear live)", flush=True)
    print(f"replaying {args.file}: {len(wanted)} images to classify", flush=True)
    subprocess.run([sys.executable, "-m", "services.ingest", "replay", str(args.file), *SCRAPED], check=True)
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    deadline = time.monotonic() + args.timeout
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        for item in fetch_recent():
            key = (item["tweet_id"], item["media_key"])
            if key in wanted and key not in seen and item["classify_ts_ms"] >= started_ms:
                seen[key] = item
                tags = ", ".join(f"#{h['hashtag']} {h['score']:.2f}" for h in item["hashtags"])
                print(f"  {item['tweet_id']} {item['media_key']}: {tags}  ({item['end_to_end_ms']} ms end to end)")
        time.sleep(1)
    print(f"\n{len(seen)} of {len(wanted)} images classified.")
    notice = model_notice()
    if notice:
        print(notice)
    print(
        "Where to look:\n"
        "  gallery           http://localhost:8080/\n"
        f"  predictions API   {SINK_API}\n"
        "  OpenAPI           http://localhost:8080/api/openapi.yaml\n"
        "  Prometheus        http://localhost:9090 (dashboards: deploy/grafana/*.json)\n"
        "  metrics           http://localhost:9101/metrics (ingest) 9102 (fetcher) 9103 (classifier) 9104 (sink)\n"
        "  Triton            http://localhost:8000/v2/models/resnet50, metrics http://localhost:8002/metrics\n"
        "  dead letters      topic tweets.dlq (bad payloads, images that could not be fetched or decoded)\n"
        "  logs              .run/logs/\n"
        "  stop everything   make down"
    )
    if len(seen) < len(wanted):
        sys.exit(1)


if __name__ == "__main__":
    main()
