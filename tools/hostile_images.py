"""Hostile files for the fetcher's tests and benchmark: decompression bombs and impostors.

Each is a few hundred bytes that claims far more than it holds, built by hand so the claim is
exactly the one under test. The decode bombs (`DECODE_BOMBS`) are the other kind: valid files
of a few bytes to 100 KB, under the pixel limit, that really decode to hundreds of megabytes.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, rows: int = 1, extra_chunks: tuple[bytes, ...] = ()) -> bytes:
    """An 8-bit greyscale PNG whose header says `width` x `height` but whose data holds `rows` rows."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width + 1) * rows, 9)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def png_text_bomb(inflated_bytes: int = 8 * 1024 * 1024) -> bytes:
    """A 4x4 PNG with a zTXt chunk that inflates to `inflated_bytes` of metadata."""
    text = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * inflated_bytes, 9))
    return png_declaring(4, 4, rows=4, extra_chunks=(text,))


def png_text_chunks_bomb(chunks: int = 8, inflated_each: int = 900_000) -> bytes:
    """A 4x4 PNG with `chunks` zTXt chunks, each under Pillow's 1 MB limit per chunk, that
    together inflate to megabytes of metadata."""
    texts = tuple(
        _png_chunk(b"zTXt", b"Comment%d\x00\x00" % n + zlib.compress(b"\x00" * inflated_each, 9)) for n in range(chunks)
    )
    return png_declaring(4, 4, rows=4, extra_chunks=texts)


def _tiny_gif() -> bytearray:
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    return bytearray(buffer.getvalue())


def gif_screen_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A one-pixel GIF whose logical screen is `width` x `height`."""
    gif = _tiny_gif()
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def gif_frame_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A GIF with a one-pixel screen whose first frame declares `width` x `height`."""
    gif = _tiny_gif()
    descriptor = gif.index(b"\x2c", 13)  # image separator after the header and colour table
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to say `width` x `height`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 30)).save(buffer, "JPEG")
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"


# Decode bombs: 7071 x 7071 is just under the default pixel limit of 50 million. The peak
# memory of decoding each with Pillow 13 into the model input, before the estimate refused
# them: WebP 770 MB, 16-bit PNG 480 MB, palette PNG 440 MB, GIF 250 MB (issue 16 measured
# 845, 550, 508 and 318 MB with another allocator state).
BOMB_SIDE = 7071


def webp_lossless_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A 38-byte lossless WebP of one colour: its entropy codes spend no bit on a pixel, so the
    header alone says how many there are."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, "WEBP", lossless=True)
    webp = bytearray(buffer.getvalue())
    assert webp[12:16] == b"VP8L", "Pillow wrote a lossy WebP"
    header = struct.unpack("<I", webp[21:25])[0]  # 14 bits width - 1, 14 bits height - 1, alpha, version
    header = (header & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
    webp[21:25] = struct.pack("<I", header)
    return bytes(webp)


def _png_of_zero_rows(header: bytes, row_bytes: int, height: int, extra_chunks: tuple[bytes, ...] = ()) -> bytes:
    deflate = zlib.compressobj(9)
    row = b"\x00" * (row_bytes + 1)  # filter byte, then the row
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def png_16bit_grey_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A 16-bit greyscale PNG of zeros (97 KB at 7071 x 7071)."""
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return _png_of_zero_rows(header, width * 2, height)


@functools.cache
def png_palette_transparency_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """An 8-bit palette PNG of zeros whose palette entry 0 is transparent (48 KB at 7071 x 7071)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    palette = _png_chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff")
    transparency = _png_chunk(b"tRNS", b"\x00")
    return _png_of_zero_rows(header, width, height, (palette, transparency))


@functools.cache
def gif_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A GIF of one colour: LZW codes grow with the run they stand for (37 KB at 7071 x 7071)."""
    buffer = io.BytesIO()
    Image.new("P", (width, height), 0).save(buffer, "GIF")
    return buffer.getvalue()


#: name -> maker of each decode bomb, for the tests and the benchmark
DECODE_BOMBS: dict[str, Callable[[], bytes]] = {
    "webp-lossless.webp": webp_lossless_bomb,
    "grey-16bit.png": png_16bit_grey_bomb,
    "palette-transparency.png": png_palette_transparency_bomb,
    "one-colour.gif": gif_bomb,
}
