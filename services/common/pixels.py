"""How an `images` record carries its pixels: raw RGB bytes, or a small JPEG of them.

The fetcher encodes, the classifier decodes; both meet here so the formats cannot drift.
`RGB8_HWC` costs nothing to decode but 150 KB per 224x224 image through Kafka, its
replicas and its retention; `JPEG` costs about a millisecond of CPU at each end for a
file 10 to 40 times smaller (bench/bench_classifier.py measures both).
"""

from __future__ import annotations

import io
import struct
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

RAW = "RGB8_HWC"
JPEG = "JPEG"
Encoding = Literal["raw", "jpeg"]
JPEG_QUALITY = 90


# What Pillow raises on a hostile or broken file: its parsers are Python reading untrusted
# bytes, and besides its own errors a mutated header ends in struct, index or key errors
# (found by tests/unit/test_image_fuzz.py). DecompressionBombError is Pillow's own pixel limit.
PILLOW_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    Image.DecompressionBombError,
)


class PixelError(ValueError):
    """The pixels do not decode to the shape the record states; `reason` says how."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(rgb: bytes, size: int, encoding: Encoding, quality: int = JPEG_QUALITY) -> tuple[str, bytes]:
    """(pixel_format, data) for `size` x `size` RGB bytes."""
    if encoding == "raw":
        return RAW, rgb
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), rgb).save(buffer, "JPEG", quality=quality)
    return JPEG, buffer.getvalue()


def decode(pixel_format: str, data: bytes, height: int, width: int) -> npt.NDArray[np.uint8]:
    """The pixels as a uint8 array of shape (height, width, 3)."""
    if pixel_format == RAW:
        array = np.frombuffer(data, dtype=np.uint8)
        if array.size != height * width * 3:
            raise PixelError("wrong_size", f"{array.size} bytes of {RAW} pixels for {height}x{width}x3")
        return array.reshape(height, width, 3)
    if pixel_format == JPEG:
        return _decode_jpeg(data, height, width)
    raise PixelError("unknown_format", f"unknown pixel format {pixel_format!r}")


def _decode_jpeg(data: bytes, height: int, width: int) -> npt.NDArray[np.uint8]:
    """The JPEG's pixels, its dimensions checked from the header before any is decoded: a
    record is untrusted, and one stating 224x224 may hold a JPEG of 60000x60000."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            if image.size != (width, height):
                raise PixelError("wrong_size", f"JPEG of {image.height}x{image.width} for {height}x{width}x3")
            decoded = np.asarray(image.convert("RGB"))
    except PixelError:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's own limit, so not the stated size either
        raise PixelError("wrong_size", f"JPEG for {height}x{width}x3: {exc}") from exc
    except PILLOW_FAILURES as exc:
        raise PixelError("undecodable", f"JPEG pixels: {type(exc).__name__}: {exc}") from exc
    if decoded.shape != (height, width, 3):  # not from a JPEG of the right size; kept as the contract
        raise PixelError("wrong_size", f"JPEG of {decoded.shape} for {height}x{width}x3")
    return decoded
