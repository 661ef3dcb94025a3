"""Hostile files for the fetcher's tests and benchmark: decompression bombs and impostors.

Each is a few hundred bytes that claims far more than it holds, built by hand so the claim is
exactly the one under test.
"""

from __future__ import annotations

import io
import struct
import zlib

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
