"""Single-core rate of the same work, JPEG → 224x224 RGB centre square, done three ways (and the
fetcher's own decode, checks included), over the same files.

- `pillow_draft_bilinear`: Pillow's reduced-scale decode (`draft()`, libjpeg's 1/2^k scales),
  then a bilinear resize of the centre square (the fetcher's path before libjpeg-turbo);
- `simplejpeg_opencv_linear` / `simplejpeg_opencv_area`: libjpeg-turbo's scaled decode (its n/8
  scales, through simplejpeg), then OpenCV's `INTER_LINEAR` or `INTER_AREA` resize;
- `opencv_reduced_area`: OpenCV's own `IMREAD_REDUCED_COLOR_{2,4,8}` decode, `INTER_AREA`, BGR to RGB;
- `fetcher`: `services.fetcher.imaging.to_model_input`, what a decode worker runs: the magic
  bytes, Pillow's header read, the pixel and memory checks, EXIF, then the fastest path above.

Rates are taken from the calling thread's CPU time (`time.thread_time`), so another process
busy on the same cores slows the wall clock but not the figure; methods are interleaved in
short slices, so a drift of the machine's speed touches all of them alike.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image

from services.fetcher.imaging import to_model_input

Decoder = Callable[[bytes, int], npt.NDArray[np.uint8] | bytes]


def pillow_draft_bilinear(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))


def _square(decoded: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    rows, columns = decoded.shape[:2]
    side = min(rows, columns)
    top, left = (rows - side) // 2, (columns - side) // 2
    return decoded[top : top + side, left : left + side]


def simplejpeg_opencv_linear(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
    return cast(npt.NDArray[np.uint8], cv2.resize(_square(decoded), (size, size), interpolation=cv2.INTER_LINEAR))


def simplejpeg_opencv_area(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
    return cast(npt.NDArray[np.uint8], cv2.resize(_square(decoded), (size, size), interpolation=cv2.INTER_AREA))


_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def opencv_reduced_area(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    rows, columns = simplejpeg.decode_jpeg_header(data)[:2]  # OpenCV has no header-only read from Python
    flag = next((f for factor, f in _REDUCED if min(rows, columns) // factor >= size), cv2.IMREAD_COLOR)
    decoded = cast(
        npt.NDArray[np.uint8], cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    )
    resized = cv2.resize(_square(decoded), (size, size), interpolation=cv2.INTER_AREA)
    return cast(npt.NDArray[np.uint8], cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))


def fetcher(data: bytes, size: int) -> bytes:
    return to_model_input(data, size, 10**9).pixels


METHODS: dict[str, Decoder] = {
    "pillow_draft_bilinear": pillow_draft_bilinear,
    "simplejpeg_opencv_linear": simplejpeg_opencv_linear,
    "simplejpeg_opencv_area": simplejpeg_opencv_area,
    "opencv_reduced_area": opencv_reduced_area,
}
#: the methods that compete for the bound; `fetcher` is measured beside them
BOUND_METHODS = tuple(METHODS)


def rates(files: list[bytes], size: int, seconds: float = 6.0, slice_s: float = 0.25) -> dict[str, float]:
    """Single-core images/s of each method (and of `fetcher`) over `files`, about `seconds` of
    CPU each, interleaved in slices of `slice_s`."""
    methods = {**METHODS, "fetcher": fetcher}
    for decode in methods.values():  # first calls set up tables and pools
        for data in files:
            decode(data, size)
    cpu = dict.fromkeys(methods, 0.0)
    done = dict.fromkeys(methods, 0)
    while min(cpu.values()) < seconds:
        for name, decode in methods.items():
            started, n = time.thread_time(), 0
            while time.thread_time() - started < slice_s or n % len(files):
                decode(files[n % len(files)], size)
                n += 1
            cpu[name] += time.thread_time() - started
            done[name] += n
    return {name: round(done[name] / cpu[name], 1) for name in methods}


def fastest(rates_by_method: dict[str, float]) -> tuple[str, float]:
    name = max(BOUND_METHODS, key=lambda m: rates_by_method[m])
    return name, rates_by_method[name]
