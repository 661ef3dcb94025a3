"""The ingest service: live on X's filtered stream with a bearer token, else replay a file once, or idle."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from services.common import runtime
from services.common.kafka import AsyncProducer, producer_config

from . import rules as stream_rules
from .live import run_live
from .loadshape import LoadShape, Throttle
from .redact import redact_secrets
from .replay import read_lines, read_payloads, replay_lines, replay_shaped, zero_series
from .scrape import Scrape, scraped
from .settings import IngestSettings


def priorities(settings: IngestSettings) -> dict[str, int]:
    rule_set = stream_rules.load_rules(settings.rules_file)
    return rule_set.priorities(settings.rule_priorities, "rule_priorities" in settings.model_fields_set)


async def replay(
    settings: IngestSettings,
    path: Path,
    rate: float,
    shape: LoadShape | None = None,
    high_share: float = 0.2,
    throttle: Throttle | None = None,
    scrape: Scrape | None = None,
) -> dict[str, object]:
    """Replay `path`; with `scrape`, its counters are served and scraped from start to end
    (services/ingest/scrape.py), as the `make replay` command does. The service's own replay
    (`INGEST_REPLAY_FILE`) needs none: the service is scraped on its port."""
    async with contextlib.AsyncExitStack() as stack:
        if scrape is not None:
            zero_series(settings)
            await stack.enter_async_context(scraped(scrape))
        producer = AsyncProducer(producer_config(settings.kafka, "tagstream-ingest-replay", wait_forever=True))
        try:
            if shape is None:
                summary = await replay_lines(read_lines(path), settings, producer, rate, priorities(settings))
            else:
                summary = await replay_shaped(
                    read_payloads(path), shape, high_share, settings, producer, priorities(settings), throttle=throttle
                )
        finally:
            await producer.close()
    return dataclasses.asdict(summary)


async def service(rt: runtime.Runtime, settings: IngestSettings) -> None:
    if settings.x_bearer_token is not None:  # every log line is scrubbed of it from here on
        redact_secrets(settings.x_bearer_token.get_secret_value())
    if settings.live:
        await run_live(settings, rt)
        return
    if settings.replay_file is not None:
        summary = await replay(settings, settings.replay_file, settings.replay_rate)
        print(json.dumps({"replayed": str(settings.replay_file), **summary}), file=sys.stderr)
    # Without X credentials the service idles (healthy, so `make up` and probes see it);
    # replays come from `make replay`.
    await rt.stop.wait()
