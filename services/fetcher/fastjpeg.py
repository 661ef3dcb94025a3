"""A JPEG's centre square at the model's size, the fastest way measured on these cores.

libjpeg-turbo (through simplejpeg) decodes at the smallest of its n/8 scales whose short side
still covers the input, and OpenCV resizes the centre square bilinearly. Against Pillow's draft
(which only has the scales 1/2^k) and resize, and OpenCV's own `IMREAD_REDUCED_*` decode with
`INTER_AREA`, it is the fastest for full-size photos and for X's `small` renditions alike
(`bench/bench_fetcher.py`, `fetcher_decoders_*`). Bilinear is enough here: after the scaled decode the
square is less than twice the input's side, so every source pixel still weighs in on some output
pixel and nothing aliases, and OpenCV's `INTER_AREA` was slower at these ratios.

The result matches Pillow's path within a tolerance tests/unit/test_decoders.py states: the scale
libjpeg-turbo picks can differ (3/8 where Pillow must take 1/2), and the square's corner is
rounded to a whole pixel where Pillow's may fall halfway.

Only the colour spaces libjpeg-turbo turns into RGB as Pillow does are taken: YCbCr, RGB and
grey. CMYK and YCCK (Adobe's inverted ink values among them) are left to Pillow.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import simplejpeg

from services.common.errors import RecordError

# One decode thread per core is the deployed shape; OpenCV's own thread pool would compete with it.
cv2.setNumThreads(1)

COLOUR_SPACES = frozenset({"YCbCr", "RGB", "Gray"})


class FastJpegError(RecordError):
    """The JPEG did not decode (corrupt, truncated, or its header disagrees with itself)."""


def centre_square(data: bytes, size: int, width: int, height: int) -> npt.NDArray[np.uint8] | None:
    """`size` x `size` x 3 RGB of the JPEG `data`, whose header (as Pillow read it) says `width` x
    `height`; None when its colour space is one Pillow must convert."""
    try:
        rows, columns, colour_space, _ = simplejpeg.decode_jpeg_header(data)
        if (columns, rows) != (width, height):
            # Two parsers read the same header differently: only a crafted file does that.
            raise FastJpegError("corrupt_image", f"JPEG header reads {columns}x{rows} and {width}x{height}")
        if colour_space not in COLOUR_SPACES:
            return None
        # strict: a truncated or corrupt file is refused, as Pillow refuses it, not filled with grey
        decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size, strict=True)
    except ValueError as exc:
        raise FastJpegError("corrupt_image", f"JPEG: {exc}") from exc
    rows, columns = decoded.shape[:2]
    side = min(rows, columns)
    top, left = (rows - side) // 2, (columns - side) // 2
    square = decoded[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized: npt.NDArray[np.uint8] = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized
