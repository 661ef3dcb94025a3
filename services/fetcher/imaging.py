"""Check and decode an untrusted image into the model's input: uint8 RGB, square, centre-cropped.

Order of work, cheapest refusal first: magic bytes decide the type; the header gives the
dimensions, refused above the pixel limit before a single pixel is decoded (PNG and GIF bombs
declare huge sizes in a few bytes; a GIF frame larger than its screen enlarges the size Pillow
reports, so it is caught the same way); JPEGs are decoded at reduced scale (libjpeg DCT
scaling through `draft()`); only the first frame of an animation is decoded. The centre square
is cropped and resized before colour conversion and EXIF orientation: both commute with a
centre-square crop, and on 224x224 pixels they cost almost nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from services.common.errors import RecordError

PIXEL_FORMAT = "RGB8_HWC"

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


def to_model_input(data: bytes, size: int, max_pixels: int) -> ModelInput:
    """Decode `data` and return `size` x `size` RGB pixels; ImageError says why it cannot."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageError("unsupported_type", f"magic bytes {data[:8].hex()} are not JPEG, PNG, WebP or GIF")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            width, height = image.size  # from the header only: nothing decoded yet
            if width * height > max_pixels:
                raise ImageError("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
            if width < 1 or height < 1:
                raise ImageError("corrupt_image", f"{width}x{height} has no pixels")
            if fmt == "JPEG":
                # libjpeg DCT scaling: decode at the smallest 1/2^k scale whose short side is still >= size.
                image.draft("RGB", (size, size))
            image.load()  # first frame of an animation; raises on truncated or corrupt data
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            square = _centre_square(_resizable(image), size)
            rgb = _to_rgb(square)
            for step in _ORIENT.get(orientation, ()):
                rgb = rgb.transpose(step)
            return ModelInput(rgb.tobytes(), width, height, fmt, size)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


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
