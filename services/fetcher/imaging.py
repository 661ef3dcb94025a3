"""Check and decode an untrusted image into the model's input: uint8 RGB, square, centre-cropped.

Order of work, cheapest refusal first: magic bytes decide the type; the header gives the
dimensions, refused above the pixel limit before a single pixel is decoded (PNG and GIF bombs
declare huge sizes in a few bytes; a GIF frame larger than its screen enlarges the size Pillow
reports, so it is caught the same way); JPEGs are decoded at reduced scale (libjpeg DCT
scaling: libjpeg-turbo's n/8 scales through `fastjpeg` for YCbCr, RGB and grey, Pillow's
`draft()` for CMYK); only the first frame of an animation is decoded. The centre square is
cropped and resized before colour conversion and EXIF orientation: both commute with a
centre-square crop, and on 224x224 pixels they cost almost nothing.

Memory is checked before decoding too: a few bytes can describe a picture that decodes to
hundreds of megabytes while staying under the pixel limit (a lossless WebP of one colour, a
16-bit grey PNG). `open_image` reads the header and estimates the peak
memory of the whole decode (`decode_memory`), from what was measured of Pillow for each format
and mode; an image over the per-image cap is refused, and the caller admits the rest against a
budget shared by all decodes before decoding it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, PngImagePlugin

from services.common.errors import RecordError
from services.common.pixels import PILLOW_FAILURES

from . import fastjpeg

PIXEL_FORMAT = "RGB8_HWC"


def _return_large_buffers_to_the_system(threshold: int = 4 * 1024 * 1024) -> None:
    """Have glibc map every allocation of `threshold` bytes or more on its own and unmap it when
    freed. By default it raises that threshold to the size of the largest block freed so far
    (Pillow allocates images in blocks of 16 MB), and from then on such blocks come from the
    arena of the decode thread that asked and stay there when freed: each decode thread keeps
    the memory of the largest decode it ran, so decodes admitted one at a time still add up
    (measured: four of 60 MB on four threads, 187 MB; with this, 63 MB). A fixed threshold turns
    that adjustment off. Photos decoded at reduced scale stay under it and are not affected."""
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is not None:
        m_mmap_threshold = -3
        mallopt(m_mmap_threshold, threshold)


_return_large_buffers_to_the_system()

# Pillow keeps up to 64 MB of inflated PNG text (zTXt, iTXt) while it reads a header, before
# any estimate can count it; no text is used here, and 4 MB leaves room for large XMP packets.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024

# Magic bytes decide the type, never the Content-Type header.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
)

# Modes whose transparency is kept through the resize (Pillow premultiplies them) and then
# composited on white.
_ALPHA_MODES = {"RGBA", "LA", "RGBa", "La"}
_SIXTEEN_BIT_GREY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}

_EXIF_ORIENTATION = 0x0112
_ORIENT: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


class ImageError(RecordError):
    """Why bytes gave no model input (refused before decoding, or corrupt)."""


@dataclass(frozen=True)
class ModelInput:
    pixels: bytes
    source_width: int
    source_height: int
    source_format: str
    size: int
    #: how `pixels` holds the image (services/common/pixels.py); the decoder gives raw bytes
    pixel_format: str = PIXEL_FORMAT


def sniff_format(head: bytes) -> str | None:
    for magic, offset, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic and (name != "WEBP" or head[:4] == b"RIFF"):
            return name
    return None


class OpenImage:
    """An image whose header is read and checked but whose pixels are not decoded yet, with the
    peak memory its decode will take. `close()` it (or use `with`) whether decoded or not."""

    __slots__ = ("data", "image", "memory_bytes", "source_format", "source_height", "source_width")

    def __init__(self, image: Image.Image, source_format: str, memory_bytes: int, data: bytes = b"") -> None:
        self.image = image
        self.data = data
        self.source_format = source_format
        self.source_width, self.source_height = image.size
        self.memory_bytes = memory_bytes

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> OpenImage:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def to_model_input(data: bytes, size: int, max_pixels: int, max_memory: int | None = None) -> ModelInput:
    """Decode `data` and return `size` x `size` RGB pixels; ImageError says why it cannot."""
    with open_image(data, size, max_pixels, max_memory) as image:
        return decode(image, size)


def open_image(data: bytes, size: int, max_pixels: int, max_memory: int | None = None) -> OpenImage:
    """Read and check the header of `data`; refuse it (ImageError) if its decode would take more
    than `max_pixels` pixels or `max_memory` bytes."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageError("unsupported_type", f"magic bytes {data[:8].hex()} are not JPEG, PNG, WebP or GIF")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from exc
    except PILLOW_FAILURES as exc:
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    try:
        width, height = image.size  # from the header only: nothing decoded yet
        if width * height > max_pixels:
            raise ImageError("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
        if width < 1 or height < 1:
            raise ImageError("corrupt_image", f"{width}x{height} has no pixels")
        opened = OpenImage(image, fmt, 0, data)
        if fmt == "JPEG":
            # libjpeg DCT scaling: decode at the smallest 1/2^k scale whose short side is still >= size.
            image.draft("RGB", (size, size))
        opened.memory_bytes = _estimate(image, fmt, data, size, (width, height))
        if max_memory is not None and opened.memory_bytes > max_memory:
            raise ImageError(
                "too_much_memory",
                f"{image.mode} {fmt} of {width}x{height} would take about {opened.memory_bytes >> 20} MiB "
                f"to decode, over {max_memory >> 20} MiB",
            )
        return opened
    except ImageError:
        image.close()
        raise
    except PILLOW_FAILURES as exc:
        image.close()
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


def decode(opened: OpenImage, size: int, *, pillow_only: bool = False) -> ModelInput:
    """Decode an opened image into `size` x `size` RGB pixels; ImageError says why it cannot.

    JPEGs in YCbCr, RGB or grey go through libjpeg-turbo's scaled decode (`fastjpeg`), the
    fastest; the rest (CMYK JPEGs, PNG, WebP, GIF), or everything with `pillow_only`, through
    Pillow. EXIF orientation is applied to either result after the crop (they commute with a
    centre-square crop)."""
    image = opened.image
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        square = None if pillow_only else _fast_square(opened, size)
        if square is not None and orientation not in _ORIENT:
            return ModelInput(square.tobytes(), opened.source_width, opened.source_height, opened.source_format, size)
        if square is not None:
            rgb = Image.fromarray(square)
        else:
            image.load()  # first frame of an animation; raises on truncated or corrupt data
            rgb = _to_rgb(_centre_square(_resizable(image), size))
        for step in _ORIENT.get(orientation, ()):
            rgb = rgb.transpose(step)
        return ModelInput(rgb.tobytes(), opened.source_width, opened.source_height, opened.source_format, size)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from exc
    except PILLOW_FAILURES as exc:
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


def _fast_square(opened: OpenImage, size: int) -> npt.NDArray[np.uint8] | None:
    if opened.source_format != "JPEG" or not opened.data:
        return None
    try:
        return fastjpeg.centre_square(opened.data, size, opened.source_width, opened.source_height)
    except fastjpeg.FastJpegError as exc:
        raise ImageError(exc.reason, exc.detail) from exc


# Peak memory of a decode, measured with Pillow 13 (the process's peak RSS over one decode,
# tests/unit/test_fetcher_decode_memory.py checks each case against this model). A JPEG that
# `fastjpeg` decodes costs no more than this counts for Pillow: libjpeg-turbo's scale is never
# larger than the one `draft()` picks (it has the n/8 scales besides Pillow's 1/2^k), and it
# keeps 3 bytes a pixel where Pillow keeps 4; the progressive coefficients are the same. A decoded
# image takes `_STORED_BYTES` per pixel (RGB is kept in 4 bytes); `_resizable` and the resize
# add full-size copies (`_conversion_bytes`); WebP goes through libwebp's animation decoder,
# which holds two canvases of 4 bytes per pixel besides the frame it returns and Pillow's
# copy of it; a progressive or multi-scan JPEG keeps every DCT coefficient of the full-size
# image (2 bytes each) whatever the scale it is decoded at. Reading the header copies the whole
# body of a WebP, and the application segments of a JPEG.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_WEBP_DECODER_BYTES = 13
_COEFFICIENT_BYTES = 2
_FIXED_BYTES = 2 * 1024 * 1024


def decode_memory(
    fmt: str,
    mode: str,
    decoded: tuple[int, int],
    *,
    palette_transparency: bool,
    coefficient_bytes: int,
    header_bytes: int,
    size: int,
) -> int:
    """Estimated peak bytes of decoding an image of `mode`, `decoded` pixels wide and high (after
    any reduced-scale decode), into `size` x `size` RGB; `header_bytes` of the file are copied
    while its header is read."""
    pixels = decoded[0] * decoded[1]
    per_pixel = _STORED_BYTES.get(mode, 4) + _conversion_bytes(mode, palette_transparency)
    if fmt == "WEBP":
        per_pixel += _WEBP_DECODER_BYTES
    first_resize_pass = 4 * size * min(decoded)  # Pillow resizes across, then down
    return pixels * per_pixel + coefficient_bytes + first_resize_pass + header_bytes + _FIXED_BYTES


def _conversion_bytes(mode: str, palette_transparency: bool) -> int:
    """Bytes per pixel of the full-size copies `_resizable` and the resize make, mode by mode."""
    if mode in ("RGB", "L"):
        return 0
    if mode in _ALPHA_MODES:
        return 4  # premultiplied copy for the resize
    if mode == "PA" or (mode == "P" and palette_transparency):
        return 8  # RGBA, then its premultiplied copy
    if mode in _SIXTEEN_BIT_GREY:
        return 8  # I, then scaled
    return 4  # RGB


def _estimate(image: Image.Image, fmt: str, data: bytes, size: int, source: tuple[int, int]) -> int:
    return decode_memory(
        fmt,
        image.mode,
        image.size,
        palette_transparency="transparency" in image.info,
        coefficient_bytes=_jpeg_coefficient_bytes(image, data, source) if fmt == "JPEG" else 0,
        header_bytes=len(data) if fmt == "WEBP" else _jpeg_segment_bytes(data) if fmt == "JPEG" else 0,
        size=size,
    )


def _jpeg_coefficient_bytes(image: Image.Image, data: bytes, source: tuple[int, int]) -> int:
    """The whole-image coefficient buffer libjpeg keeps for a progressive file, or for a
    sequential one whose first scan lacks some components; 0 when it decodes in one pass."""
    layers: list[tuple[int, int, int, int]] = getattr(image, "layer", [])
    if not layers:
        return 0
    if not image.info.get("progressive") and _first_scan_components(data) >= len(layers):
        return 0
    width, height = source
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    mcu_across, mcu_down = math.ceil(width / (8 * h_max)), math.ceil(height / (8 * v_max))
    blocks = sum(mcu_across * h * mcu_down * v for _, h, v, _ in layers)
    return blocks * 64 * _COEFFICIENT_BYTES


def _jpeg_markers(data: bytes) -> list[tuple[int, int]]:
    """(marker, offset of its segment) from SOI up to and including the first SOS."""
    found = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            pos += 2
            continue
        found.append((marker, pos + 4))
        if marker == 0xDA:
            break
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return found


def _jpeg_segment_bytes(data: bytes) -> int:
    """Bytes of the application and comment segments, which Pillow keeps as it reads them."""
    return sum(
        struct.unpack(">H", data[start - 2 : start])[0]
        for marker, start in _jpeg_markers(data)
        if 0xE0 <= marker <= 0xEF or marker == 0xFE
    )


def _first_scan_components(data: bytes) -> int:
    """How many components the first scan holds (0 when it cannot be told: assume the worst)."""
    for marker, start in _jpeg_markers(data):
        if marker == 0xDA and start < len(data):
            return data[start]
    return 0


def _resizable(image: Image.Image) -> Image.Image:
    """A mode that bilinear resizing handles and that converts to RGB without losing meaning."""
    mode = image.mode
    if mode in ("RGB", "L") or mode in _ALPHA_MODES:
        return image
    if mode == "PA" or (mode == "P" and "transparency" in image.info):  # a palette cannot be interpolated
        return image.convert("RGBA")
    if mode in _SIXTEEN_BIT_GREY:  # 16-bit PNG grey: scale, a plain convert would clip at 255
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGB")  # CMYK, 1, YCbCr, LAB, HSV, F


def _centre_square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from L, RGB or an alpha mode; transparency is composited on white, as a viewer shows it."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
