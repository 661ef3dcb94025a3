"""Two sink replicas sharing one PostgreSQL: each consumes half the partitions, each shows everything.

Both run as `python -m services.sink` in one consumer group on a two-partition topic of
this test. The live stream of one replica carries the predictions the other stored
(LISTEN/NOTIFY), and either API serves all of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from services.common.avro import PREDICTIONS, nest_origin
from services.common.settings import KafkaSettings
from tests.sink import postgres
from tests.sink.records import prediction

from .processes import free_port, fresh_topics, service

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres.cluster() as url, postgres.fresh_schema(url) as schema_url:
        yield schema_url


def assignment(admin: AdminClient, group: str) -> list[list[int]]:
    """The partitions of each member of the group, sorted."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sorted(sorted(tp.partition for tp in m.assignment.topic_partitions) for m in description.members)


def wait_for_split(admin: AdminClient, group: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while (split := assignment(admin, group)) != [[0], [1]]:
        assert time.monotonic() < deadline, f"the group never split the partitions: {split}"
        time.sleep(0.5)


async def read_predictions(response: aiohttp.ClientResponse, wanted: int) -> set[str]:
    seen: set[str] = set()
    async for line in response.content:
        if line.startswith(b"data: "):
            seen.add(json.loads(line.removeprefix(b"data: "))["tweet_id"])
            if len(seen) == wanted:
                break
    return seen


async def test_every_replica_streams_what_any_replica_stores(kafka: None, database_url: str, tmp_path: Path) -> None:
    (topic,) = fresh_topics("sink-replicas", partitions=2)
    settings = KafkaSettings()
    admin = AdminClient(settings.client_config())
    ports = [(free_port(), free_port()) for _ in range(2)]
    try:
        with ExitStack() as replicas:
            for n, (api_port, metrics_port) in enumerate(ports):
                env = {
                    "SINK_API_HOST": "127.0.0.1",
                    "SINK_API_PORT": str(api_port),
                    "SINK_METRICS_PORT": str(metrics_port),
                    "SINK_GROUP_ID": topic,
                    "SINK_INPUT_TOPIC": topic,
                    "SINK_DATABASE_URL": database_url,
                    "SINK_INSTANCE_ID": f"sink-{n}",  # two static members on one host
                }
                replicas.enter_context(service("sink", env, tmp_path / f"sink-{n}.log", metrics_port))
            await asyncio.to_thread(wait_for_split, admin, topic)

            first, second = (f"http://127.0.0.1:{api_port}" for api_port, _ in ports)
            producer = Producer(settings.client_config())
            async with aiohttp.ClientSession() as session, session.get(first + "/api/events") as events:
                assert events.status == 200
                sent = set()
                for n in range(6):
                    tweet_id = str(5000 + n)
                    producer.produce(
                        topic, PREDICTIONS.encode(nest_origin(prediction(tweet_id))), key=tweet_id, partition=n % 2
                    )
                    sent.add(tweet_id)
                assert producer.flush(10) == 0
                streamed = await asyncio.wait_for(read_predictions(events, len(sent)), timeout=60)
                assert streamed == sent  # half of them were consumed and stored by the other replica
                async with session.get(second + "/api/predictions") as response:
                    served = {p["tweet_id"] for p in (await response.json())["items"]}
                assert served == sent
    finally:
        admin.delete_topics([topic, f"{topic}.dlq", f"{topic}.shed"])
