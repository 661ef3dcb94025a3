"""Newline-delimited lines off a stream, each bounded: a line over the limit is not kept whole.

aiohttp's own `readline` raises once a line passes its buffer (512 KiB by default), which ended
the live stream. Here a longer line is reported as oversized with its first bytes (for the
dead letter) and its length, the rest of it is read and dropped as it arrives, and the next
line is read as usual: memory stays within the limit plus one chunk, whatever X sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: what an oversized line keeps, for its dead letter
KEPT_BYTES = 64 * 1024


class Chunks(Protocol):
    async def readany(self) -> bytes: ...


@dataclass(frozen=True)
class Line:
    #: the line without its newline, or the first `KEPT_BYTES` of an oversized one
    data: bytes
    #: its whole length, newline excluded
    length: int
    #: False at the end of the stream: `data` is what came after the last newline
    complete: bool = True
    #: longer than the reader's limit: `data` is only its start
    oversized: bool = False


class LineReader:
    def __init__(self, chunks: Chunks, max_bytes: int) -> None:
        self.chunks = chunks
        self.max_bytes = max_bytes
        self._buffer = bytearray()

    async def next(self) -> Line:
        """The next line; at the end of the stream, an incomplete one (empty if nothing was left)."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                line = bytes(self._buffer[: min(end, self.max_bytes + 1)])
                del self._buffer[: end + 1]
                if end > self.max_bytes:
                    return Line(line[:KEPT_BYTES], end, oversized=True)
                return Line(line, end)
            if len(self._buffer) > self.max_bytes:
                return await self._drop_rest()
            searched = len(self._buffer)
            chunk = await self.chunks.readany()
            if not chunk:
                rest = bytes(self._buffer)
                self._buffer.clear()
                return Line(rest, len(rest), complete=False)
            self._buffer += chunk

    async def _drop_rest(self) -> Line:
        kept = bytes(self._buffer[:KEPT_BYTES])
        length = len(self._buffer)
        self._buffer.clear()
        while True:
            chunk = await self.chunks.readany()
            if not chunk:
                return Line(kept, length, complete=False, oversized=True)
            end = chunk.find(b"\n")
            if end >= 0:
                self._buffer += chunk[end + 1 :]
                return Line(kept, length + end, oversized=True)
            length += len(chunk)
