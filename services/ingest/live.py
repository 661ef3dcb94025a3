"""The live service: X's filtered stream into the `tweets` topic, for weeks, unattended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from confluent_kafka import KafkaException
from tweepy.errors import HTTPException, TooManyRequests, TwitterServerError

from services.common.kafka import AsyncProducer, producer_config
from services.common.runtime import Runtime

from . import metrics as ingest_metrics
from . import rules as stream_rules
from .backoff import Backoff, BackoffPolicy
from .dedup import RecentIds, newest_keys
from .payload import PayloadError, is_operational_disconnect, parse_line, stream_errors
from .produce import PayloadFile, PayloadProducer, Prepared
from .settings import IngestSettings
from .xapi import ConnectionLost, XStreamingClient, query_fields

log = logging.getLogger(__name__)


def backoff_policy(settings: IngestSettings) -> BackoffPolicy:
    return BackoffPolicy(
        network_step_s=settings.network_backoff_step_s,
        network_max_s=settings.network_backoff_max_s,
        http_start_s=settings.http_backoff_start_s,
        http_max_s=settings.http_backoff_max_s,
        rate_limit_start_s=settings.rate_limit_backoff_start_s,
        rate_limit_max_s=settings.rate_limit_backoff_max_s,
    )


def stream_client(settings: IngestSettings) -> XStreamingClient:
    """A plain client (no callbacks) for the rules commands."""
    return XStreamingClient(_token(settings), **_client_options(settings))


class LiveStream(XStreamingClient):
    """Each payload read from the stream goes through `payloads`; system messages, connection
    changes and keep-alives go to the metrics and the logs."""

    def __init__(
        self,
        settings: IngestSettings,
        payloads: PayloadProducer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(_token(settings), **_client_options(settings))
        self.payloads = payloads
        self.max_disconnected_s = settings.max_disconnected_s
        self._clock = clock
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._pending: set[asyncio.Future[None]] = set()
        self.connected = False
        self.disconnected_since: float = clock()

    def readiness(self) -> str | None:
        """For /healthz: not ready once disconnected for longer than `max_disconnected_s`."""
        if self.connected:
            return None
        down = self._clock() - self.disconnected_since
        if down <= self.max_disconnected_s:
            return None
        return f"X stream disconnected for {down:.0f} s"

    async def drain(self, wait_s: float = 30.0) -> None:
        """Wait for every record handed to the producer, at most `wait_s` (a broker down for
        longer keeps them; the process is ending and says how many)."""
        if not self._pending:
            return
        _, unsent = await asyncio.wait(list(self._pending), timeout=wait_s)
        if unsent:
            log.error("stopping with posts not delivered", extra={"fields": {"posts": len(unsent)}})

    async def on_connect(self) -> None:
        self.connected = True
        ingest_metrics.STREAM_CONNECTS.inc()
        ingest_metrics.STREAM_CONNECTED.set(1)
        log.info("stream connected")

    async def on_keep_alive(self) -> None:
        ingest_metrics.KEEP_ALIVES.inc()

    async def on_data(self, raw_data: bytes) -> None:
        try:
            payload: dict[str, Any] | None = parse_line(raw_data)
        except (PayloadError, UnicodeDecodeError):
            payload = None  # `prepare` parses it again and dead-letters it with the reason
        try:
            errors = stream_errors(payload) if payload is not None else None
            if errors is not None:
                self._system_message(errors)
                return
            outgoing = self.payloads.prepare(raw_data, payload)
        except Exception as exc:
            log.exception("internal error on a stream payload")
            outgoing = self.payloads.dead_letter(raw_data, "internal_error", repr(exc))
        if outgoing is not None:
            await self._send(outgoing)

    async def _send(self, outgoing: Prepared) -> None:
        await self._slots.acquire()
        future = self.payloads.send(outgoing)
        self._pending.add(future)
        future.add_done_callback(self._settled)

    async def on_oversized_line(self, prefix: bytes, length: int) -> None:
        detail = f"a line of {length} bytes, over INGEST_MAX_LINE_BYTES ({self.max_line_bytes})"
        extra = [("value_truncated", f"{length} bytes: line_too_long")]
        await self._send(self.payloads.dead_letter(prefix, "line_too_long", detail, extra=extra))

    async def on_connection_lost(self, lost: ConnectionLost) -> None:
        if self.connected:
            self.connected = False
            self.disconnected_since = self._clock()
        ingest_metrics.STREAM_CONNECTED.set(0)
        ingest_metrics.STREAM_DISCONNECTS.labels(lost.reason).inc()
        ingest_metrics.RECONNECT_WAIT_SECONDS.inc(lost.wait_s)
        if lost.reason == "stall":
            ingest_metrics.STREAM_STALLS.inc()
        if lost.status is not None:
            ingest_metrics.HTTP_ERRORS.labels("stream", str(lost.status)).inc()
        if lost.reason == "rate_limited":
            ingest_metrics.RATE_LIMITS.labels("stream").inc()
        fields = {"reason": lost.reason, "status": lost.status, "reconnect_in_s": round(lost.wait_s, 3)}
        log.warning("stream disconnected", extra={"fields": fields | {"detail": lost.detail[:300]}})

    async def on_disconnect(self) -> None:
        self.connected = False
        ingest_metrics.STREAM_CONNECTED.set(0)
        log.info("stream closed")

    def _system_message(self, errors: list[dict[str, Any]]) -> None:
        for error in errors:
            ingest_metrics.STREAM_ERRORS.labels(ingest_metrics.error_title_label(error.get("title"))).inc()
        summary = [{k: str(error.get(k, ""))[:200] for k in ("title", "detail", "type")} for error in errors]
        if is_operational_disconnect(errors):
            log.warning("operational disconnect announced", extra={"fields": {"errors": summary}})
            self.request_reconnect("operational_disconnect")
        else:
            log.warning("stream error message", extra={"fields": {"errors": summary}})

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._pending.discard(future)
        self._slots.release()


async def run_live(settings: IngestSettings, rt: Runtime) -> None:
    """Sync the rules, then read the stream until the process is told to stop."""
    rule_set = stream_rules.load_rules(settings.rules_file)
    priorities = rule_set.priorities(settings.rule_priorities, "rule_priorities" in settings.model_fields_set)
    recent = await _recent_posts(settings, rt.stop)
    producer = AsyncProducer(producer_config(settings.kafka, "tagstream-ingest", wait_forever=True), on_fatal=rt.fail)
    recording = PayloadFile(settings.record_file) if settings.record_file is not None else None
    payloads = PayloadProducer(
        producer,
        output_topic=settings.output_topic,
        dlq_topic=settings.dlq_topic,
        priorities=priorities,
        default_priority=settings.default_priority,
        source="x_stream",
        recent=recent,
        recording=recording,
    )
    stream = LiveStream(settings, payloads)
    rt.health.add_check(stream.readiness)
    task: asyncio.Task[None] | None = None
    try:
        if settings.sync_rules and not await _sync_rules(stream, rule_set, settings, rt.stop):
            return
        params: dict[str, Any] = query_fields()
        if settings.stream_backfill_minutes:
            params["backfill_minutes"] = settings.stream_backfill_minutes
        task = stream.filter(**params)
        stopped = asyncio.create_task(rt.stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            task.result()  # the loop only ends on a bug: let it surface
            raise RuntimeError("the stream loop ended")
    finally:
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stream.drain()
        await producer.close()
        if recording is not None:
            recording.close()
        log.info("live ingest stopped", extra={"fields": _tally_fields(payloads)})


async def _recent_posts(settings: IngestSettings, stop: asyncio.Event) -> RecentIds:
    """The duplicate window, filled again from the newest posts in the output topic; retried
    until it can be read, since a window forgotten at a restart lets X's resends through."""
    recent = RecentIds(settings.dedup_window)
    backoff = Backoff(backoff_policy(settings))
    while not stop.is_set():
        try:
            keys = await asyncio.to_thread(newest_keys, settings.kafka, settings.output_topic, settings.dedup_window)
        except (KafkaException, RuntimeError, TimeoutError) as exc:
            wait = backoff.after_network_error()
            fields = {"topic": settings.output_topic, "error": str(exc)[:300], "retry_in_s": wait}
            log.warning("recent posts unreadable, retrying", extra={"fields": fields})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            continue
        for key in keys:
            recent.add(key)
        log.info("duplicate window restored", extra={"fields": {"posts": len(recent), "topic": settings.output_topic}})
        break
    return recent


async def _sync_rules(
    client: XStreamingClient, rule_set: stream_rules.RuleSet, settings: IngestSettings, stop: asyncio.Event
) -> bool:
    """Sync, retrying while X is unreachable or busy; False when stopped first.

    A refusal that retrying cannot fix (a rule X cannot parse, a bad token) raises.
    """
    backoff = Backoff(backoff_policy(settings))
    while not stop.is_set():
        try:
            change = await stream_rules.sync(client, rule_set)
        except TooManyRequests as exc:
            wait = backoff.after_rate_limit(exc.reset_time, time.time())
            log.warning("rules sync rate-limited, retrying", extra={"fields": {"retry_in_s": round(wait, 1)}})
        except (TwitterServerError, aiohttp.ClientError, TimeoutError) as exc:
            wait = backoff.after_http_error()
            log.warning("rules sync failed, retrying", extra={"fields": {"error": str(exc)[:300], "retry_in_s": wait}})
        except HTTPException as exc:
            raise stream_rules.RulesError(f"X refused the rules sync: {exc}") from exc
        else:
            ingest_metrics.RULES_CHANGED.labels("added").inc(len(change.add))
            ingest_metrics.RULES_CHANGED.labels("deleted").inc(len(change.delete))
            fields = {"added": len(change.add), "deleted": len(change.delete), "unchanged": len(change.keep)}
            log.info("rules synced", extra={"fields": fields})
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
    return False


def _tally_fields(payloads: PayloadProducer) -> dict[str, Any]:
    tally = payloads.tally
    return {
        "lines": tally.lines,
        "produced": tally.produced,
        "without_images": tally.without_images,
        "duplicates": tally.duplicates,
        "dead_letters": tally.dead_letters,
    }


def _token(settings: IngestSettings) -> str:
    if settings.x_bearer_token is None:
        raise ValueError("X_BEARER_TOKEN is not set")
    return settings.x_bearer_token.get_secret_value()


def _client_options(settings: IngestSettings) -> dict[str, Any]:
    return {
        "base_url": settings.x_api_base_url,
        "backoff": backoff_policy(settings),
        "stall_timeout_s": settings.stall_timeout_s,
        "request_timeout_s": settings.request_timeout_s,
        "max_line_bytes": settings.max_line_bytes,
    }
