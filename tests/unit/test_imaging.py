"""Format conversions and refusals of the fetcher's decoder."""

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from services.fetcher.imaging import ImageError, sniff_format, to_model_input


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixels(data: bytes, size: int = 32) -> npt.NDArray[np.uint8]:
    result = to_model_input(data, size, 10_000_000)
    return np.frombuffer(result.pixels, np.uint8).reshape(size, size, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_each_accepted_format_gives_square_rgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (120, 80), (200, 30, 30)), fmt)
    result = to_model_input(data, 32, 10_000_000)
    assert result.source_format == fmt
    assert (result.source_width, result.source_height) == (120, 80)
    assert len(result.pixels) == 32 * 32 * 3
    assert np.abs(pixels(data).astype(int) - (200, 30, 30)).max() < 12


def test_grayscale_becomes_rgb() -> None:
    out = pixels(encode(Image.new("L", (40, 40), 100), "PNG"))
    assert (out == 100).all()


def test_cmyk_jpeg_becomes_rgb() -> None:
    out = pixels(encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"))
    assert out[..., 0].mean() > 200  # red
    assert out[..., 1].mean() < 60


def test_alpha_is_composited_on_white() -> None:
    out = pixels(encode(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"))
    assert (out == 255).all()


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0] * 256)
    out = pixels(encode(image, "PNG", transparency=0))
    assert (out == 255).all()


def test_animation_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((0, 0, 255), (255, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = pixels(buffer.getvalue())
    assert out[..., 2].mean() > 200
    assert out[..., 0].mean() < 30


def test_exif_orientation_is_applied() -> None:
    # a 60x20 landscape image whose EXIF says "rotate 90": the model sees it upright (portrait)
    image = Image.new("RGB", (60, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 30, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    out = pixels(encode(image, "JPEG", exif=exif.tobytes(), quality=95), size=16)
    # after rotating 90° clockwise the white half is on top
    assert out[:6].mean() > 200
    assert out[-6:].mean() < 60


def test_crop_is_centred() -> None:
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # a white centre square
    assert pixels(encode(image, "PNG")).mean() > 250


def test_large_jpegs_decode_at_reduced_scale() -> None:
    image = Image.new("RGB", (2400, 1600), (10, 120, 10))
    result = to_model_input(encode(image, "JPEG"), 224, 10_000_000)
    assert (result.source_width, result.source_height) == (2400, 1600)
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
