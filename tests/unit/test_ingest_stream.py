"""The stream client's connection loop against a local server speaking X's stream protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.ingest.backoff import BackoffPolicy
from services.ingest.payload import is_operational_disconnect, stream_errors
from services.ingest.xapi import ConnectionLost, XStreamingClient, query_fields
from tests.fakes.x_api import KEEP_ALIVE, OPERATIONAL_DISCONNECT, Connection, FakeXApi, post

TOKEN = "AAAA%2Fnot-a-real-bearer-token-0123456789"
FAST = BackoffPolicy(
    network_step_s=0.05,
    network_max_s=0.2,
    http_start_s=0.05,
    http_max_s=0.2,
    rate_limit_start_s=0.05,
    rate_limit_max_s=3.0,
)


class Recorder(XStreamingClient):
    """Keeps what the loop reported; stops itself after `stop_after` posts."""

    def __init__(self, base_url: str, stop_after: int, token: str = TOKEN) -> None:
        super().__init__(token, base_url=base_url, backoff=FAST, stall_timeout_s=0.5)
        self.events: list[str] = []
        self.lost: list[ConnectionLost] = []
        self.posts: list[str] = []
        self.stop_after = stop_after
        self.stop_after_lost: int | None = None
        self.done = asyncio.Event()

    async def on_connect(self) -> None:
        self.events.append("connect")

    async def on_keep_alive(self) -> None:
        self.events.append("keep_alive")

    async def on_data(self, raw_data: bytes) -> None:
        payload = json.loads(raw_data)
        errors = stream_errors(payload)
        if errors is not None:
            self.events.append("system_message")
            if is_operational_disconnect(errors):
                self.request_reconnect("operational_disconnect")
            return
        self.posts.append(payload["data"]["id"])
        if len(self.posts) >= self.stop_after:
            self.done.set()

    async def on_connection_lost(self, lost: ConnectionLost) -> None:
        self.events.append(f"lost:{lost.reason}")
        self.lost.append(lost)
        if self.stop_after_lost is not None and len(self.lost) >= self.stop_after_lost:
            self.done.set()


@pytest.fixture
async def server() -> AsyncIterator[FakeXApi]:
    fake = FakeXApi(TOKEN)
    await fake.start()
    yield fake
    await fake.close()


async def run_until_done(client: Recorder, timeout_s: float = 30) -> None:
    task = client.filter(**query_fields())
    try:
        await asyncio.wait_for(client.done.wait(), timeout_s)
    finally:
        client.disconnect()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_stream_survives_a_cut_a_429_a_503_a_stall_and_an_operational_disconnect(server: FakeXApi) -> None:
    half_a_post = json.dumps(post("5")).encode()[:40]
    server.connections = [
        Connection([post("1"), KEEP_ALIVE, post("2"), half_a_post], end="cut"),
        Connection(status=429, reset_in_s=1),
        Connection(status=503),
        Connection([post("3"), KEEP_ALIVE], end="stall"),
        Connection([post("4"), OPERATIONAL_DISCONNECT], end="hold"),
        Connection([post("5")], end="close"),
        Connection([post("6")], end="hold"),
    ]
    client = Recorder(server.base_url, stop_after=6)
    await run_until_done(client)

    assert client.posts == ["1", "2", "3", "4", "5", "6"]
    assert [lost.reason for lost in client.lost] == [
        "network_error",
        "rate_limited",
        "http_error",
        "stall",
        "operational_disconnect",
        "closed",
    ]
    rate_limited = client.lost[1]
    assert rate_limited.status == 429
    # The wait follows the reset header, not the (much shorter) exponential schedule.
    assert rate_limited.wait_s > FAST.rate_limit_start_s
    assert client.events.count("connect") == 5
    assert "keep_alive" in client.events
    assert server.unauthorized == 0


async def test_every_connection_asks_for_the_fields_records_need(server: FakeXApi) -> None:
    server.connections = [Connection([post("1")], end="hold")]
    client = Recorder(server.base_url, stop_after=1)
    await run_until_done(client)

    query = server.stream_queries[0]
    assert set(query["expansions"].split(",")) == {"attachments.media_keys", "author_id"}
    assert {"url", "preview_image_url", "type", "width", "height"} <= set(query["media.fields"].split(","))
    assert {"created_at", "lang", "entities", "possibly_sensitive"} <= set(query["tweet.fields"].split(","))
    assert {"username", "name"} <= set(query["user.fields"].split(","))


async def test_a_refused_token_backs_off_exponentially(server: FakeXApi) -> None:
    client = Recorder(server.base_url, stop_after=1, token="wrong-token-wrong-token")
    client.stop_after_lost = 4
    task = client.filter()
    try:
        await asyncio.wait_for(client.done.wait(), 30)
    finally:
        client.disconnect()
        with pytest.raises(asyncio.CancelledError):
            await task
    waits = [lost.wait_s for lost in client.lost[:4]]
    assert [lost.status for lost in client.lost[:4]] == [401] * 4
    assert waits == [FAST.http_start_s, FAST.http_start_s * 2, FAST.http_start_s * 4, FAST.http_max_s]


def test_system_messages_are_told_apart_from_posts() -> None:
    errors = stream_errors(OPERATIONAL_DISCONNECT)
    assert errors is not None
    assert is_operational_disconnect(errors)
    assert stream_errors(post("1")) is None
    partial: dict[str, Any] = post("1") | {"errors": [{"title": "Not Found Error"}]}
    assert stream_errors(partial) is None  # a post with partial errors is still a post
    other = stream_errors({"errors": [{"title": "ConnectionException", "detail": "too many connections"}]})
    assert other is not None
    assert not is_operational_disconnect(other)
