"""/healthz of the live service: ready while connected, and for a grace period after a disconnect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.kafka import AsyncProducer
from services.ingest.live import LiveStream
from services.ingest.produce import PayloadProducer
from services.ingest.settings import IngestSettings
from services.ingest.xapi import ConnectionLost


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def producer() -> AsyncIterator[AsyncProducer]:
    real = AsyncProducer({"bootstrap.servers": "127.0.0.1:9"})
    yield real
    await real.close()


def live_stream(producer: AsyncProducer, clock: Clock) -> LiveStream:
    settings = IngestSettings(X_BEARER_TOKEN="test-bearer-token-0123456789", max_disconnected_s=60)
    payloads = PayloadProducer(
        producer, output_topic="o", dlq_topic="d", priorities={}, default_priority=0, source="x_stream"
    )
    return LiveStream(settings, payloads, clock=clock)


async def test_ready_while_connected_and_during_the_grace_period(producer: AsyncProducer) -> None:
    clock = Clock()
    stream = live_stream(producer, clock)
    assert stream.readiness() is None  # starting up: within the grace period
    clock.now += 61
    assert stream.readiness() is not None  # never connected for longer than allowed
    await stream.on_connect()
    assert stream.readiness() is None
    clock.now += 3600
    assert stream.readiness() is None  # connected, however long
    await stream.on_connection_lost(ConnectionLost("stall", 0.1))
    clock.now += 59
    assert stream.readiness() is None
    clock.now += 2
    problem = stream.readiness()
    assert problem is not None
    assert "disconnected for 61 s" in problem


async def test_failed_attempts_do_not_restart_the_grace_period(producer: AsyncProducer) -> None:
    clock = Clock()
    stream = live_stream(producer, clock)
    await stream.on_connect()
    await stream.on_connection_lost(ConnectionLost("network_error", 0.1))
    for _ in range(10):
        clock.now += 10
        await stream.on_connection_lost(ConnectionLost("http_error", 5, status=503))
    assert stream.readiness() is not None
