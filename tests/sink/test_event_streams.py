"""Live-update streams whose client stops reading: a real socket that reads the headers, then nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import yarl

from services.sink.store import Store

from .records import prediction
from .test_api import Api, serving

# Each event carries a post this long: a few hundred fill the socket buffers of both ends.
LONG_TEXT = "x" * 64_000


@asynccontextmanager
async def stalled_client(api: Api) -> AsyncIterator[socket.socket]:
    """A client that opens a stream, reads its headers and first line, and never reads again."""
    url = yarl.URL(api.base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    request = f"GET /api/events HTTP/1.1\r\nHost: {url.host}\r\nAccept: text/event-stream\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    head = b""
    while b"retry: 3000" not in head:
        chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1024), timeout=10)
        assert chunk, "the stream closed at once"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200")
    try:
        yield sock
    finally:
        sock.close()


async def fill_until_every_stream_overflows(api: Api) -> None:
    """Store predictions with long text until every open stream has fallen a full queue behind."""
    for n in range(5_000):
        await api.store.upsert(prediction(str(n), text=LONG_TEXT))
        await asyncio.sleep(0)  # the streams write what they can between two predictions
        if api.hub.behind() == len(api.hub):
            return
    raise AssertionError("the streams kept up with 5,000 predictions: the client is not stalled")


async def open_connections(api: Api) -> int:
    server = api.server.runner.server if api.server.runner else None
    assert server is not None
    return len(server.connections)


async def test_stalled_clients_keep_their_slots_until_their_stream_ends(store: Store) -> None:
    async with serving(store, max_streams=2, write_timeout_s=600) as api, stalled_client(api), stalled_client(api):
        await fill_until_every_stream_overflows(api)
        assert len(api.hub) == 2  # both handlers still blocked in a write
        async with api.session.get(api.base + "/api/events") as third:
            assert third.status == 503


async def test_a_stalled_client_is_disconnected_after_the_write_timeout(store: Store) -> None:
    async with serving(store, max_streams=1, write_timeout_s=0.2) as api, stalled_client(api):
        await fill_until_every_stream_overflows(api)
        # Nothing is read on the client: only the server's timeout can end the stream.
        for _ in range(100):
            if len(api.hub) == 0 and await open_connections(api) == 0:
                break
            await asyncio.sleep(0.1)
        assert (len(api.hub), await open_connections(api)) == (0, 0)
        async with api.session.get(api.base + "/api/events") as again:
            assert again.status == 200  # the slot is free again
