"""How an `images` record carries its pixels: raw RGB bytes, or a small JPEG of them.

The fetcher encodes, the classifier decodes; both meet here so the formats cannot drift.
`RGB8_HWC` costs nothing to decode but 150 KB per 224x224 image through Kafka, its
replicas and its retention; `JPEG` costs about a millisecond of CPU at each end for a
file 10 to 40 times smaller (bench/bench_classifier.py measures both).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

RAW = "RGB8_HWC"
JPEG = "JPEG"
Encoding = Literal["raw", "jpeg"]
JPEG_QUALITY = 90


class PixelError(ValueError):
    """The pixels do not decode to the shape the record states."""


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
            raise PixelError(f"{array.size} bytes of {RAW} pixels for {height}x{width}x3")
        return array.reshape(height, width, 3)
    if pixel_format == JPEG:
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                decoded = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:
            raise PixelError(f"undecodable JPEG pixels: {exc}") from exc
        if decoded.shape != (height, width, 3):
            raise PixelError(f"JPEG of {decoded.shape} for {height}x{width}x3")
        return decoded
    raise PixelError(f"unknown pixel format {pixel_format!r}")
