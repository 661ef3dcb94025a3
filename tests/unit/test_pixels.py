import numpy as np
import pytest

from services.common import pixels
from tools import hostile_images


def gradient(size: int = 32) -> bytes:
    x = np.linspace(0, 255, size, dtype=np.uint8)
    return np.stack([np.tile(x, (size, 1))] * 3, axis=-1).tobytes()


def test_raw_round_trip_is_exact() -> None:
    fmt, data = pixels.encode(gradient(), 32, "raw")
    assert fmt == pixels.RAW
    assert pixels.decode(fmt, data, 32, 32).tobytes() == gradient()


def test_jpeg_round_trip_is_close_and_much_smaller() -> None:
    fmt, data = pixels.encode(gradient(), 32, "jpeg")
    assert fmt == pixels.JPEG
    assert len(data) < len(gradient())
    decoded = pixels.decode(fmt, data, 32, 32).astype(int)
    original = np.frombuffer(gradient(), np.uint8).reshape(32, 32, 3).astype(int)
    assert np.abs(decoded - original).mean() < 3


@pytest.mark.parametrize(
    ("fmt", "data", "match"),
    [
        (pixels.RAW, b"\x00" * 10, "bytes of"),
        (pixels.JPEG, b"not a jpeg", "undecodable"),
        ("PNG", b"", "unknown pixel format"),
    ],
)
def test_what_does_not_decode_to_the_stated_shape_is_refused(fmt: str, data: bytes, match: str) -> None:
    with pytest.raises(pixels.PixelError, match=match):
        pixels.decode(fmt, data, 32, 32)


def test_a_jpeg_of_another_size_is_refused() -> None:
    fmt, data = pixels.encode(gradient(16), 16, "jpeg")
    with pytest.raises(pixels.PixelError, match="for 32x32x3"):
        pixels.decode(fmt, data, 32, 32)


def test_a_jpeg_declaring_a_huge_size_is_refused_from_its_header() -> None:
    """Over Pillow's own bomb limit: its DecompressionBombError must come out as a PixelError."""
    with pytest.raises(pixels.PixelError) as info:
        pixels.decode(pixels.JPEG, hostile_images.jpeg_declaring(60_000, 60_000), 224, 224)
    assert info.value.reason == "wrong_size"


def test_a_jpeg_of_another_size_is_refused_before_it_is_decoded() -> None:
    """8000x8000 is under Pillow's limit: decoding it first would allocate 256 MB for a record
    that says 224x224. Refused on its header, it never gets that far."""
    data = hostile_images.jpeg_declaring(8000, 8000)
    with pytest.raises(pixels.PixelError) as info:
        pixels.decode(pixels.JPEG, data, 224, 224)
    assert info.value.reason == "wrong_size"
    assert "8000x8000" in info.value.detail


def test_every_refusal_has_a_reason_and_a_detail() -> None:
    for fmt, data in ((pixels.RAW, b"\x00"), (pixels.JPEG, b"\xff\xd8\xff"), ("PNG", b"")):
        with pytest.raises(pixels.PixelError) as info:
            pixels.decode(fmt, data, 32, 32)
        assert info.value.reason in {"wrong_size", "undecodable", "unknown_format"}
        assert info.value.detail
