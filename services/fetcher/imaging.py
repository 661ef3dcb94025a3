"""Check and decode an untrusted image into the model's input: uint8 RGB, square, centre-cropped."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

PIXEL_FORMAT = "RGB8_HWC"

# Magic bytes decide the type, never the Content-Type header.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
)


class ImageError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ModelInput:
    pixels: bytes
    source_width: int
    source_height: int
    source_format: str
    size: int


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
            width, height = image.size
            if width * height > max_pixels:  # header only: nothing decoded yet
                raise ImageError("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
            if fmt == "JPEG":
                # libjpeg DCT scaling: decode at the smallest 1/2^k scale still >= size.
                image.draft("RGB", (size, size))
            image.load()  # first frame of an animation; raises on truncated or corrupt data
            oriented = ImageOps.exif_transpose(image)
            rgb = _to_rgb(oriented)
            square = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BILINEAR)
            return ModelInput(square.tobytes(), width, height, fmt, size)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; transparency is composited on white, as a viewer would show it."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
