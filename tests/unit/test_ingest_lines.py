import pytest

from services.ingest.lines import KEPT_BYTES, Line, LineReader


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.largest_read = 0

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


async def lines_of(reader: LineReader) -> list[Line]:
    out = []
    while True:
        line = await reader.next()
        out.append(line)
        if not line.complete:
            return out


async def test_lines_split_across_and_within_chunks() -> None:
    reader = LineReader(Chunks(b'{"a":', b" 1}\r\n\r\n{", b'"b": 2}\r\n'), max_bytes=1024)
    lines = await lines_of(reader)
    assert [(line.data, line.complete) for line in lines] == [
        (b'{"a": 1}\r', True),
        (b"\r", True),
        (b'{"b": 2}\r', True),
        (b"", False),
    ]


async def test_an_oversized_line_keeps_its_start_and_the_next_line_is_read_whole() -> None:
    big = b"x" * (3 * KEPT_BYTES)
    chunks = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    reader = LineReader(Chunks(b"first\n", *chunks, b"\nnext\n"), max_bytes=2 * KEPT_BYTES)
    first, oversized, following, end = await lines_of(reader)
    assert first == Line(b"first", 5)
    assert oversized.oversized
    assert oversized.data == big[:KEPT_BYTES]
    assert oversized.length == len(big)
    assert following == Line(b"next", 4)
    assert not end.complete
    assert len(reader._buffer) == 0


async def test_the_buffer_never_holds_much_more_than_the_limit() -> None:
    class Watching(Chunks):
        async def readany(self) -> bytes:
            self.largest_read = max(self.largest_read, len(reader._buffer))
            return await super().readany()

    chunks = Watching(*[b"y" * 4096] * 1000, b"\nok\n")
    reader = LineReader(chunks, max_bytes=100_000)
    oversized = await reader.next()
    assert oversized.length == 4096 * 1000
    assert chunks.largest_read <= 100_000 + 4096
    assert (await reader.next()) == Line(b"ok", 2)


@pytest.mark.parametrize("tail", [b"", b"partial"])
async def test_the_end_of_the_stream_is_an_incomplete_line(tail: bytes) -> None:
    reader = LineReader(Chunks(b"one\n" + tail), max_bytes=100)
    assert await reader.next() == Line(b"one", 3)
    assert await reader.next() == Line(tail, len(tail), complete=False)


async def test_a_line_just_over_the_limit_is_oversized_even_when_it_arrives_in_one_chunk() -> None:
    reader = LineReader(Chunks(b"x" * 101 + b"\nok\n"), max_bytes=100)
    over = await reader.next()
    assert over.oversized
    assert over.length == 101
    assert (await reader.next()) == Line(b"ok", 2)
    exact = LineReader(Chunks(b"y" * 100 + b"\n"), max_bytes=100)
    assert not (await exact.next()).oversized
