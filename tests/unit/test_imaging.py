"""Format conversions and refusals of the fetcher's decoder: every accepted format and colour
mode ends as square uint8 RGB with the colours a viewer would show."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageOps

from services.fetcher.imaging import ImageError, sniff_format, to_model_input
from tests.fetcher.support import encode

RED = (200, 30, 30)


def pixels(data: bytes, size: int = 32) -> npt.NDArray[np.int64]:
    result = to_model_input(data, size, 10_000_000)
    assert len(result.pixels) == size * size * 3
    return np.frombuffer(result.pixels, np.uint8).reshape(size, size, 3).astype(np.int64)


def close_to(out: npt.NDArray[np.int64], colour: tuple[int, int, int], tolerance: int = 6) -> bool:
    return bool(np.abs(out - colour).max() <= tolerance)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_each_accepted_format_gives_square_rgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (120, 80), RED), fmt)
    result = to_model_input(data, 32, 10_000_000)
    assert result.source_format == fmt
    assert (result.source_width, result.source_height) == (120, 80)
    assert close_to(pixels(data), RED, tolerance=12)


# (format, source image, save options, expected RGB)
CONVERSIONS = [
    ("JPEG", "L", Image.new("L", (40, 30), 100), {}, (100, 100, 100)),
    ("JPEG", "CMYK", Image.new("CMYK", (40, 30), (0, 255, 255, 0)), {}, (255, 0, 0)),
    ("JPEG", "progressive", Image.new("RGB", (40, 30), RED), {"progressive": True, "quality": 95}, RED),
    ("PNG", "RGB", Image.new("RGB", (40, 30), RED), {}, RED),
    ("PNG", "RGBA opaque", Image.new("RGBA", (40, 30), (*RED, 255)), {}, RED),
    ("PNG", "RGBA transparent", Image.new("RGBA", (40, 30), (0, 0, 0, 0)), {}, (255, 255, 255)),
    ("PNG", "RGBA half", Image.new("RGBA", (40, 30), (0, 0, 0, 128)), {}, (127, 127, 127)),
    ("PNG", "L", Image.new("L", (40, 30), 100), {}, (100, 100, 100)),
    ("PNG", "LA half", Image.new("LA", (40, 30), (0, 128)), {}, (127, 127, 127)),
    ("PNG", "1", Image.new("1", (40, 30), 1), {}, (255, 255, 255)),
    ("PNG", "I;16", Image.new("I;16", (40, 30), 100 * 256), {}, (100, 100, 100)),
    ("PNG", "interlaced", Image.new("RGB", (40, 30), RED), {"interlace": 1}, RED),
    ("WEBP", "RGB lossy", Image.new("RGB", (40, 30), RED), {"quality": 95}, RED),
    ("WEBP", "RGBA lossless transparent", Image.new("RGBA", (40, 30), (0, 0, 0, 0)), {"lossless": True}, (255,) * 3),
    ("WEBP", "RGBA lossless opaque", Image.new("RGBA", (40, 30), (*RED, 255)), {"lossless": True}, RED),
    ("GIF", "L", Image.new("L", (40, 30), 100), {}, (100, 100, 100)),
]


@pytest.mark.parametrize(
    ("fmt", "image", "options", "expected"),
    [(fmt, image, options, expected) for fmt, _, image, options, expected in CONVERSIONS],
    ids=[f"{fmt}-{mode}" for fmt, mode, *_ in CONVERSIONS],
)
def test_colour_modes_become_rgb(
    fmt: str, image: Image.Image, options: dict[str, object], expected: tuple[int, int, int]
) -> None:
    assert close_to(pixels(encode(image, fmt, **options)), expected, tolerance=6 if fmt != "JPEG" else 10)


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (40, 30), 1)
    image.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_becomes_rgb(fmt: str) -> None:
    assert close_to(pixels(encode(palette_image(False), fmt)), RED)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(fmt: str) -> None:
    image = palette_image(True)
    assert close_to(pixels(encode(image, fmt, transparency=1)), (255, 255, 255))


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_uses_the_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((0, 0, 255), (255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    assert close_to(pixels(buffer.getvalue()), (0, 0, 255))


def quadrants() -> Image.Image:
    """A 120x80 image, four colours in its quadrants: any rotation or flip shows."""
    image = Image.new("RGB", (120, 80))
    for (x, y), colour in zip(
        [(0, 0), (60, 0), (0, 40), (60, 40)], [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)], strict=True
    ):
        image.paste(colour, (x, y, x + 60, y + 40))
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(quadrants(), fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    expected = np.asarray(ImageOps.fit(upright.convert("RGB"), (32, 32), Image.Resampling.BILINEAR), np.int64)
    out = pixels(data)
    # compare the centre of each quadrant, away from the blurred edges between colours
    for rows in (slice(2, 12), slice(20, 30)):
        for cols in (slice(2, 12), slice(20, 30)):
            assert np.abs(out[rows, cols].mean((0, 1)) - expected[rows, cols].mean((0, 1))).max() < 12


def test_crop_is_centred() -> None:
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # a white centre square
    assert pixels(encode(image, "PNG")).mean() > 250


@pytest.mark.parametrize("size", [(2400, 1600), (1600, 2400), (225, 4000)])
def test_large_jpegs_decode_at_reduced_scale(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (10, 120, 10))
    result = to_model_input(encode(image, "JPEG"), 224, 10_000_000)
    assert (result.source_width, result.source_height) == size
    assert len(result.pixels) == 224 * 224 * 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "unsupported_type"),
        (b"<!doctype html><html></html>", "unsupported_type"),
        (b"", "unsupported_type"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "corrupt_image"),
    ],
)
def test_refusals_carry_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as info:
        to_model_input(data, 32, 10_000_000)
    assert info.value.reason == reason


def test_truncated_jpeg_is_refused() -> None:
    noisy = Image.effect_noise((400, 400), 60).convert("RGB")
    data = encode(noisy, "JPEG")
    with pytest.raises(ImageError) as info:
        to_model_input(data[: len(data) // 2], 32, 10_000_000)
    assert info.value.reason == "corrupt_image"


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(Image.new("L", (4000, 4000)), "PNG")  # small file, 16 M pixels
    with pytest.raises(ImageError) as info:
        to_model_input(data, 32, max_pixels=1_000_000)
    assert info.value.reason == "too_many_pixels"


def test_magic_bytes_decide_the_type() -> None:
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_format(b"GIF89a") == "GIF"
    assert sniff_format(b"GIF87a") == "GIF"
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xdb") == "JPEG"
    assert sniff_format(b"BM\x00\x00") is None  # BMP: decodable by Pillow, not accepted
    assert sniff_format(b"II*\x00") is None  # TIFF
