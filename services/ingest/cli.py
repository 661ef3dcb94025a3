"""The ingest command line: `python -m services.ingest [run | replay FILE | rules | backfill ...]`.

`run` (the default) is the service; the others are one-off commands.
`backfill --query HASHTAG --limit N [--out FILE]`: recent search into `tweets`, or into a replay file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from services.common import logs, runtime
from services.common.kafka import AsyncProducer, producer_config

from . import rules as stream_rules
from .backfill import FileOutput, KafkaOutput, Output, backfill
from .dedup import RecentIds
from .live import stream_client
from .loadshape import LoadShape, Throttle
from .produce import PayloadFile, PayloadProducer
from .redact import redact_secrets
from .scrape import Scrape
from .service import priorities, service
from .service import replay as replay_file
from .settings import IngestSettings
from .xapi import XSearchClient


async def _rules(settings: IngestSettings, dry_run: bool) -> dict[str, Any]:
    change = await stream_rules.sync(
        stream_client(settings), stream_rules.load_rules(settings.rules_file), dry_run=dry_run
    )
    return {"dry_run": dry_run, **change.as_dict()}


async def _backfill(settings: IngestSettings, query: str, limit: int, out: Path | None) -> dict[str, Any]:
    client = XSearchClient(
        _token(settings), base_url=settings.x_api_base_url, request_timeout_s=settings.request_timeout_s
    )
    recent = RecentIds(max(limit * 4, 1000))  # spans both queries: a post they share counts once
    output: Output
    producer: AsyncProducer | None = None
    recording: PayloadFile | None = None
    if out is not None:
        output = FileOutput(PayloadFile(out), recent)
    else:
        producer = AsyncProducer(producer_config(settings.kafka, "tagstream-ingest-backfill", wait_forever=True))
        recording = PayloadFile(settings.record_file) if settings.record_file is not None else None
        payloads = PayloadProducer(
            producer,
            output_topic=settings.output_topic,
            dlq_topic=settings.dlq_topic,
            priorities=priorities(settings),
            default_priority=settings.default_priority,
            source="x_search",
            recent=recent,
            recording=recording,
        )
        output = KafkaOutput(payloads)
    try:
        report = await backfill(client, query, limit, output, max_wait_s=settings.backfill_max_wait_s)
    finally:
        if producer is not None:
            await producer.close()
        if recording is not None:
            recording.close()
    summary: dict[str, Any] = dataclasses.asdict(report)
    summary["out" if out is not None else "topic"] = str(out) if out is not None else settings.output_topic
    return summary


def _token(settings: IngestSettings) -> str:
    if not settings.live or settings.x_bearer_token is None:
        raise SystemExit("X_BEARER_TOKEN is not set")
    return settings.x_bearer_token.get_secret_value()


def _configure_logs(settings: IngestSettings) -> None:
    logs.configure(settings.log_level)
    if settings.x_bearer_token is not None:
        redact_secrets(settings.x_bearer_token.get_secret_value())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.ingest")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the ingest service (default): live with X_BEARER_TOKEN, else replay or idle")
    replaying = sub.add_parser("replay", help="replay a recorded stream file into the tweets topic")
    replaying.add_argument("file", type=Path)
    replaying.add_argument("--rate", type=float, default=0.0, help="posts per second (0: as fast as possible)")
    shape = replaying.add_argument_group("load shape (with --duration: cycle the file's posts on a schedule)")
    shape.add_argument("--duration", type=float, help="seconds to send for; the file is cycled with fresh ids")
    shape.add_argument("--burst", type=float, default=1.0, help="rate multiplier during the burst")
    shape.add_argument("--burst-start", type=float, default=0.0, help="seconds before the burst")
    shape.add_argument("--burst-seconds", type=float, default=0.0, help="length of the burst")
    shape.add_argument("--high-share", type=float, default=0.2, help="share of posts given a high-priority rule")
    shape.add_argument("--throttle", type=Throttle.parse, help="N/S: send at most N posts per S-second window")
    scraping = replaying.add_argument_group("metrics (services/ingest/scrape.py): have a Prometheus scrape the replay")
    scraping.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port while replaying (0: a free one)"
    )
    scraping.add_argument("--register", type=Path, help="a Prometheus file-discovery directory to register in")
    scraping.add_argument("--prometheus", help="that Prometheus's URL: wait for its first and final scrapes")
    scraping.add_argument("--linger", type=float, default=30.0, help="longest wait for each of those scrapes (s)")
    rules = sub.add_parser("rules", help="make the stream's rules match the rules file")
    rules.add_argument("--dry-run", action="store_true", help="print the changes and validate them; change nothing")
    back = sub.add_parser("backfill", help="recent search into the tweets topic, or into a replay file")
    back.add_argument("--query", required=True, help="a hashtag without '#': its hashtag query, then its keyword query")
    back.add_argument("--limit", type=int, required=True, help="stop after this many posts with images")
    back.add_argument("--out", type=Path, help="write a replay file instead of producing")
    args = parser.parse_args()
    settings = IngestSettings()
    if args.command in (None, "run"):
        runtime.run("ingest", settings, service)
        return
    _configure_logs(settings)
    if args.command == "replay":
        load = None
        if args.duration is not None:
            load = LoadShape(args.rate, args.duration, args.burst, args.burst_start, args.burst_seconds)
        scrape = None
        if args.metrics_port is not None:
            scrape = Scrape(args.metrics_port, args.register, args.prometheus, args.linger)
        result: dict[str, Any] = asyncio.run(
            replay_file(settings, args.file, args.rate, load, args.high_share, args.throttle, scrape)
        )
    elif args.command == "rules":
        _token(settings)
        result = asyncio.run(_rules(settings, args.dry_run))
    else:
        _token(settings)
        result = asyncio.run(_backfill(settings, args.query, args.limit, args.out))
    print(json.dumps(result))
