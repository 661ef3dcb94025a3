"""A transactional call that never returns ends the process instead of freezing the stage.

librdkafka's `send_offsets_to_transaction` can wait forever, past its own timeout, for a group
coordinator that went away with a broker restart (librdkafka issues 5456 and 5511): in a chaos
run the fetcher then stopped committing, and every post after the restart was lost to it until
the process was restarted by hand. The call is stood in for here by one that blocks on an event;
the rest of the client is librdkafka's own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition

from services.common import kafka
from services.common.kafka import TransactionalProducer
from tests.integration.processes import ROOT


class _StuckOffsets:
    """librdkafka's producer, but `send_offsets_to_transaction` waits until `release` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.release = threading.Event()
        self.calls: list[str] = []

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self.calls.append("send_offsets_to_transaction")
        self.release.wait()

    def commit_transaction(self, *args: Any) -> None:
        self.calls.append("commit_transaction")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_call_that_does_not_return_fails_as_fatal_and_so_do_the_ones_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "CALL_GRACE_S", 0.2)
    producer = TransactionalProducer(
        {"bootstrap.servers": "127.0.0.1:9", "transactional.id": "stuck-test"}, timeout_s=0.3
    )
    stuck = _StuckOffsets(producer._producer)
    producer._producer = stuck  # type: ignore[assignment]
    try:
        started = time.monotonic()
        with pytest.raises(KafkaException) as raised:
            await producer.send_offsets_to_transaction([TopicPartition("t", 0, 1)], object())
        waited = time.monotonic() - started
        error = raised.value.args[0]
        assert error.fatal(), "a stuck producer cannot be retried: the process must end"
        assert "send_offsets_to_transaction did not return" in error.str()
        assert 0.5 <= waited < 5, waited

        # The thread is still held by the first call: the next fails at once, without queueing behind it.
        started = time.monotonic()
        with pytest.raises(KafkaException) as raised:
            await producer.commit_transaction()
        assert raised.value.args[0].fatal()
        assert time.monotonic() - started < 0.2
        assert stuck.calls == ["send_offsets_to_transaction"]

        # Closing does not wait on the stuck transaction (a flush would).
        await asyncio.wait_for(producer.close(), 5)
    finally:
        stuck.release.set()


async def test_calls_that_return_are_made_in_order_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = TransactionalProducer({"bootstrap.servers": "127.0.0.1:9", "transactional.id": "order-test"})
    stuck = _StuckOffsets(producer._producer)
    stuck.release.set()
    producer._producer = stuck  # type: ignore[assignment]
    await producer.send_offsets_to_transaction([TopicPartition("t", 0, 1)], object())
    await producer.commit_transaction()
    assert stuck.calls == ["send_offsets_to_transaction", "commit_transaction"]
    await producer.close()


def test_a_failed_process_exits_even_while_a_thread_is_stuck() -> None:
    """runtime.run ends a failed process at once: a non-daemon thread blocked for good (as a
    client's destructor may block behind a stuck call) does not hold it at exit."""
    script = textwrap.dedent(
        """
        import threading
        from services.common import runtime
        from services.common.settings import ServiceSettings

        async def body(rt, settings):
            threading.Thread(target=threading.Event().wait).start()  # never ends, not a daemon
            rt.fail("stuck for the test")
            await rt.stop.wait()

        runtime.run("stuck", ServiceSettings(metrics_port=0), body)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "stuck for the test" in result.stdout + result.stderr
