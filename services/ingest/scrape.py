"""A one-off command's counters in Prometheus: `make replay` runs for seconds, between two scrapes.

While the command runs it serves `/metrics` on a port of its own and registers that port with a
Prometheus through file-based discovery: one JSON file in the directory the local Prometheus
watches (its `registered` job, deploy/prometheus/prometheus.yml), removed at the end. Before its
work it waits until Prometheus has scraped it once, its series at zero, so that `rate()` and
`increase()` see the whole run; after its work it waits until Prometheus has scraped the final
counts. With a Prometheus URL both waits end as soon as the targets API shows such a scrape; without
one (a Kubernetes Job scraped by a PodMonitor, say) each lasts `linger_s`, which should be two
scrape intervals. A Prometheus that does not answer is not waited for.

Why not a Pushgateway: what is pushed stays there after the run, in every `sum()`, until someone
deletes it, and a run's counters restarting from zero on the next push read as a reset of the same
series; and it is one more server to run. Why not hand the file to the running ingest service:
that needs a write endpoint on a port Prometheus reaches, or a file the pod can see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from services.common.health import HealthServer

log = logging.getLogger(__name__)

#: the `job` label of the registered targets: not a stage's job, so "a stage is down" alerts,
#: which select the stages' jobs, never count a replay
JOB = "ingest-replay"
FILE_PREFIX = "ingest-replay-"


@dataclass(frozen=True)
class Scrape:
    """How a one-off run is scraped. `port` 0 picks a free one."""

    port: int = 0
    #: the file-discovery directory to register in (None: no registration)
    register_dir: Path | None = None
    #: the Prometheus that scrapes it, asked when it has (None: wait `linger_s` instead)
    prometheus_url: str | None = None
    #: the longest wait for each of the two scrapes
    linger_s: float = 30.0
    host: str = "127.0.0.1"


def target_groups(instance: str) -> list[dict[str, Any]]:
    """What the registration file holds (Prometheus's file_sd format)."""
    return [{"targets": [instance], "labels": {"job": JOB}}]


def scraped_since(targets: Mapping[str, Any], instance: str, since: datetime) -> bool:
    """Whether the targets API answer shows `instance` scraped successfully after `since`."""
    for target in targets.get("data", {}).get("activeTargets", []):
        if target.get("labels", {}).get("instance") != instance or target.get("health") != "up":
            continue
        try:
            last = datetime.fromisoformat(str(target.get("lastScrape")))
        except ValueError:
            continue
        if last > since:
            return True
    return False


def stale_registrations(directory: Path, alive: Callable[[int], bool]) -> list[Path]:
    """Registration files of runs whose process is gone (killed before it could remove them)."""
    stale = []
    for path in directory.glob(f"{FILE_PREFIX}*.json"):
        pid = path.stem.removeprefix(FILE_PREFIX)
        if pid.isdigit() and not alive(int(pid)):
            stale.append(path)
    return stale


@contextlib.asynccontextmanager
async def scraped(scrape: Scrape) -> AsyncIterator[str]:
    """Serve, register and wait for a first scrape; on leaving, wait for a scrape of the final
    counts and unregister. Yields the instance (`host:port`)."""
    port = scrape.port or _free_port(scrape.host)
    health = HealthServer(port, host=scrape.host)
    await health.start()
    instance = f"{scrape.host}:{port}"
    registration = _register(scrape.register_dir, instance)
    try:
        await _wait_for_scrape(scrape, instance, datetime.now(UTC), "first")
        yield instance
        await _wait_for_scrape(scrape, instance, datetime.now(UTC), "final")
    finally:
        if registration is not None:
            registration.unlink(missing_ok=True)
        await health.stop()


def _register(directory: Path | None, instance: str) -> Path | None:
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    for stale in stale_registrations(directory, _alive):
        stale.unlink(missing_ok=True)
    path = directory / f"{FILE_PREFIX}{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")  # Prometheus reads only *.json: never a half-written one
    temporary.write_text(json.dumps(target_groups(instance)))
    temporary.replace(path)
    log.info("registered for scraping", extra={"fields": {"instance": instance, "file": str(path)}})
    return path


async def _wait_for_scrape(scrape: Scrape, instance: str, since: datetime, which: str) -> None:
    if scrape.prometheus_url is None:
        await asyncio.sleep(scrape.linger_s)
        return
    url = scrape.prometheus_url.rstrip("/") + "/api/v1/targets?state=active"
    deadline = time.monotonic() + scrape.linger_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                async with session.get(url) as response:
                    response.raise_for_status()
                    if scraped_since(await response.json(), instance, since):
                        log.info(f"{which} scrape seen", extra={"fields": {"instance": instance}})
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "Prometheus does not answer: its scrape is not waited for",
                    extra={"fields": {"url": scrape.prometheus_url, "error": str(exc)}},
                )
                return
            if time.monotonic() > deadline:
                log.warning(f"no {which} scrape within {scrape.linger_s} s", extra={"fields": {"instance": instance}})
                return
            await asyncio.sleep(0.5)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
