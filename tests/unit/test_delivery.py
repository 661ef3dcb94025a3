import asyncio

import pytest
from confluent_kafka import KafkaError

from services.common.delivery import Backoff, deliver
from services.common.kafka import DeliveryError, Outgoing
from tests.fakes.kafka import FakeBroker, FakeProducer

FAST = Backoff(0.001, 0.004)


def _no_substitute(record: Outgoing, error: DeliveryError) -> Outgoing:
    raise AssertionError(f"nothing should be refused: {error}")


async def test_a_record_is_written_again_until_the_broker_has_it() -> None:
    broker = FakeBroker()
    producer = FakeProducer(broker, {"out": [KafkaError._MSG_TIMED_OUT] * 6})
    records = [Outgoing("out", b"a", "1"), Outgoing("other", b"b", "2")]
    await deliver(producer, records, "delivery-test", _no_substitute, FAST)
    assert [m.value() for m in broker.records("out")] == [b"a"]
    assert [m.value() for m in broker.records("other")] == [b"b"]
    assert len(producer.attempts) == 8  # "other" once, "out" seven times


async def test_retrying_goes_on_until_cancelled() -> None:
    producer = FakeProducer(FakeBroker(), {"out": [KafkaError._TRANSPORT] * 10_000})
    task = asyncio.create_task(deliver(producer, [Outgoing("out", b"a")], "delivery-test", _no_substitute, FAST))
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(producer.attempts) > 5


async def test_a_refused_record_is_replaced() -> None:
    broker = FakeBroker()
    producer = FakeProducer(broker, {"out": [KafkaError.MSG_SIZE_TOO_LARGE]})

    def smaller(record: Outgoing, error: DeliveryError) -> Outgoing:
        assert error.error.code() == KafkaError.MSG_SIZE_TOO_LARGE
        return Outgoing("out.dlq", b"", record.key)

    await deliver(producer, [Outgoing("out", b"huge", "1")], "delivery-test", smaller, FAST)
    assert broker.records("out") == []
    assert [m.key() for m in broker.records("out.dlq")] == ["1"]


def test_backoff_doubles_up_to_its_maximum() -> None:
    assert [Backoff(0.5, 4).delay(n) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert Backoff(0.5, 4).delay(10_000) == 4
