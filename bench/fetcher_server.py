"""Loopback image server for the fetcher benchmark, run as its own process.

    python -m bench.fetcher_server --dir DIR --port PORT [--addresses N] [--renditions]

Serves the files of DIR (sorted) as keep-alive HTTP/1.1 on 127.0.0.1 ... 127.0.0.N (so a load
can spread over several hosts), with plain asyncio streams so the server costs little of the
CPU the fetcher is measured on. Every URL is distinct, so a fetcher cache never helps:

    /img/<delay ms>/<n>      file n mod count, after <delay ms>
    /media/<delay ms>/<n>?format=jpg&name=<name>
                             with --renditions, as X serves a photo: file n mod count fitted
                             within the box of rendition <name> (small 680, medium 1200, large
                             2048, 360x360, 900x900; never enlarged), as a quality-85 JPEG made
                             at start; without a name, medium (as X); another name, 404
    /trickle/<n>             declares 2 MB, then sends a byte per second (a slow server)
    /declared/<n>            declares 50 MB, then stalls (refused on its Content-Length)
    /chunked/<n>             30 MB without Content-Length, as fast as read (cut while streaming)
    /stats                   JSON: requests, trickles open now and at most
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from services.fetcher.renditions import DOCUMENTED, UNDOCUMENTED

TRICKLE_DECLARED = 2_000_000
DECLARED_BYTES = 50_000_000
CHUNKED_BYTES = 30 * 1024 * 1024
CHUNK = b"\xff" * (256 * 1024)


RENDITION_QUALITY = 85


def renditions(original: bytes) -> dict[str, bytes]:
    """Each named rendition of `original`, fitted within its box and never enlarged, as X does."""
    out = {}
    for name, box in DOCUMENTED + UNDOCUMENTED:
        with Image.open(io.BytesIO(original)) as image:
            image.thumbnail((box, box), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=RENDITION_QUALITY)
            out[name] = buffer.getvalue()
    return out


class ImageServer:
    def __init__(self, files: list[bytes], with_renditions: bool = False) -> None:
        self.responses = [_head(200, len(body), "image/jpeg") + body for body in files]
        self.renditions = [
            {name: _head(200, len(body), "image/jpeg") + body for name, body in renditions(original).items()}
            for original in (files if with_renditions else [])
        ]
        self.requests = 0
        self.trickles_open = 0
        self.trickles_max = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                path = head.split(b" ", 2)[1].decode()
                if not await self._answer(path, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must close after it."""
        target = urlsplit(path)
        parts = target.path.strip("/").split("/")
        if parts[0] == "media" and self.renditions:
            delay_ms, n = int(parts[1]), int(parts[2])
            name = parse_qs(target.query).get("name", ["medium"])[0]
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            rendition = self.renditions[n % len(self.renditions)].get(name)
            writer.write(rendition if rendition is not None else _head(404, 0, "text/plain"))
            return True
        if parts[0] == "img":
            delay_ms, n = int(parts[1]), int(parts[2])
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            writer.write(self.responses[n % len(self.responses)])
            return True
        if parts[0] == "trickle":
            await self._trickle(writer)
            return False
        if parts[0] == "declared":
            writer.write(_head(200, DECLARED_BYTES, "image/jpeg"))
            await writer.drain()
            await asyncio.sleep(3600)
            return False
        if parts[0] == "chunked":
            await self._chunked(writer)
            return True
        if parts[0] == "stats":
            body = json.dumps(
                {"requests": self.requests, "trickles_open": self.trickles_open, "trickles_max": self.trickles_max}
            ).encode()
            writer.write(_head(200, len(body), "application/json") + body)
            return True
        writer.write(_head(404, 0, "text/plain"))
        return True

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        self.trickles_open += 1
        self.trickles_max = max(self.trickles_max, self.trickles_open)
        try:
            writer.write(_head(200, TRICKLE_DECLARED, "image/jpeg") + b"\xff\xd8\xff")
            for _ in range(TRICKLE_DECLARED):
                await writer.drain()
                await asyncio.sleep(1)
                if writer.is_closing():
                    return
                writer.write(b"\x00")
        finally:
            self.trickles_open -= 1

    async def _chunked(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        while sent < CHUNKED_BYTES:
            writer.write(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
            sent += len(CHUNK)
            await writer.drain()
        writer.write(b"0\r\n\r\n")


def _head(status: int, length: int, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found"}[status]
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()


async def _main(files: list[bytes], port: int, addresses: int, with_renditions: bool) -> None:
    server = ImageServer(files, with_renditions)
    hosts = [f"127.0.0.{i}" for i in range(1, addresses + 1)]
    listener = await asyncio.start_server(server.serve, hosts, port, backlog=4096, limit=64 * 1024)
    print("ready", flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fetcher_server")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--addresses", type=int, default=1)
    parser.add_argument("--renditions", action="store_true", help="serve /media/ as X serves renditions")
    args = parser.parse_args()
    files = [p.read_bytes() for p in sorted(args.dir.iterdir()) if p.is_file()]
    asyncio.run(_main(files, args.port, args.addresses, args.renditions))


if __name__ == "__main__":
    main()
