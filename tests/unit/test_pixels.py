import numpy as np
import pytest

from services.common import pixels


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
