"""The fast JPEG path (libjpeg-turbo's scaled decode and OpenCV's resize, `services/fetcher/fastjpeg.py`)
against Pillow's: the same pixels within a stated tolerance, the same EXIF orientation, and what
it leaves to Pillow.

The tolerance, per image of 224x224x3 values against Pillow's draft-and-resize of the same file:
a mean absolute difference of at most 1.5 (of 255), and at most 2 % of the values more than 16
apart. Where the two differ, and by how much on these images: libjpeg-turbo may decode at 3/8
where Pillow has only 1/2 (means 0.4-0.55, no value more than 16 apart on the full-size photos);
the centre square's corner is a whole pixel where Pillow's may fall halfway, which on the drawn
photos' sharp noise moves single values by up to about 80 (means up to 0.94, at most 0.84 % of
values more than 16 apart, on the `small` renditions). A colour channel swapped, or the square a
few pixels off centre, is far outside it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from services.fetcher import fastjpeg
from services.fetcher.imaging import ImageError, decode, open_image, to_model_input
from tests.fetcher.support import encode
from tools.demo_data import photo

SIZE = 224
MAX_MEAN_DIFFERENCE = 1.5
MAX_SHARE_FAR_APART = 0.02
FAR_APART = 16


def both(data: bytes) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(the fetcher's pixels, Pillow's pixels) of one file."""
    with open_image(data, SIZE, 10**9) as opened:
        fast = decode(opened, SIZE)
    with open_image(data, SIZE, 10**9) as opened:
        pillow = decode(opened, SIZE, pillow_only=True)
    shape = (SIZE, SIZE, 3)
    return (
        np.frombuffer(fast.pixels, np.uint8).reshape(shape).astype(np.int64),
        np.frombuffer(pillow.pixels, np.uint8).reshape(shape).astype(np.int64),
    )


def within_tolerance(fast: npt.NDArray[np.int64], pillow: npt.NDArray[np.int64]) -> tuple[bool, str]:
    difference = np.abs(fast - pillow)
    mean, share = float(difference.mean()), float((difference > FAR_APART).mean())
    ok = mean <= MAX_MEAN_DIFFERENCE and share <= MAX_SHARE_FAR_APART
    return ok, f"mean difference {mean:.2f}, {share:.2%} of values more than {FAR_APART} apart"


def rendition(image: Image.Image, box: int) -> Image.Image:
    small = image.copy()
    small.thumbnail((box, box), Image.Resampling.LANCZOS)
    return small


# (name, JPEG file): drawn photos at full size and as X's renditions, portrait and square,
# grey, progressive, 4:4:4, and sizes that need each of libjpeg-turbo's scales
CASES: list[tuple[str, bytes]] = [
    *[(f"photo-{i}-1200x800", encode(photo(i), "JPEG", quality=88)) for i in range(4)],
    *[(f"photo-{i}-small", encode(rendition(photo(i), 680), "JPEG", quality=85)) for i in range(4)],
    ("photo-2048x1365", encode(photo(5, (2048, 1365)), "JPEG", quality=88)),
    ("photo-4032x3024-small", encode(rendition(photo(6, (4032, 3024)), 680), "JPEG", quality=85)),
    ("portrait-1080x1920-small", encode(rendition(photo(7, (1080, 1920)), 680), "JPEG", quality=85)),
    ("square-900", encode(photo(8, (900, 900)), "JPEG", quality=90)),
    ("grey", encode(photo(9).convert("L"), "JPEG", quality=90)),
    ("progressive", encode(photo(10), "JPEG", quality=88, progressive=True)),
    ("subsampling-444", encode(photo(11), "JPEG", quality=95, subsampling=0)),
    ("smaller-than-the-input", encode(photo(12, (200, 150)), "JPEG", quality=90)),
    ("gradient-3000x2000", encode(Image.linear_gradient("L").resize((3000, 2000)).convert("RGB"), "JPEG")),
]


@pytest.mark.parametrize(("name", "data"), CASES, ids=[name for name, _ in CASES])
def test_the_fast_path_matches_pillow_within_the_tolerance(name: str, data: bytes) -> None:
    fast, pillow = both(data)
    ok, how = within_tolerance(fast, pillow)
    assert ok, f"{name}: {how}"


def test_the_tolerance_catches_what_would_be_a_bug() -> None:
    """A swapped colour order, or the square a few pixels off centre, is outside it."""
    _, pillow = both(CASES[0][1])
    assert not within_tolerance(pillow[..., ::-1], pillow)[0]
    assert not within_tolerance(np.roll(pillow, 3, axis=1), pillow)[0]


def test_photos_in_ycbcr_take_the_fast_path() -> None:
    """Its exact output, so the comparisons above compare two decoders, not Pillow with itself."""
    data = CASES[0][1]
    expected = fastjpeg.centre_square(data, SIZE, 1200, 800)
    assert expected is not None
    assert to_model_input(data, SIZE, 10**9).pixels == expected.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_on_the_pillow_path(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo(3), "JPEG", quality=90, exif=exif.tobytes())
    fast, pillow = both(data)
    ok, how = within_tolerance(fast, pillow)
    assert ok, f"orientation {orientation}: {how}"
    # and it is really turned: unlike the unturned image for every orientation but 1
    unturned, _ = both(encode(photo(3), "JPEG", quality=90))
    assert within_tolerance(fast, unturned)[0] is (orientation == 1)


def test_cmyk_is_left_to_pillow_with_its_colours() -> None:
    data = encode(Image.new("CMYK", (400, 300), (0, 255, 255, 0)), "JPEG")
    assert fastjpeg.centre_square(data, SIZE, 400, 300) is None
    pixels = np.frombuffer(to_model_input(data, SIZE, 10**9).pixels, np.uint8).reshape(SIZE, SIZE, 3)
    assert np.abs(pixels.astype(int) - (255, 0, 0)).max() <= 10


def test_a_truncated_jpeg_is_refused_not_filled_in() -> None:
    data = CASES[0][1]
    with pytest.raises(ImageError) as info:
        to_model_input(data[: len(data) // 2], SIZE, 10**9)
    assert info.value.reason == "corrupt_image"


def test_a_header_the_two_parsers_read_differently_is_refused() -> None:
    with pytest.raises(fastjpeg.FastJpegError) as info:
        fastjpeg.centre_square(CASES[0][1], SIZE, 1201, 800)
    assert info.value.reason == "corrupt_image"


def test_images_other_than_jpeg_decode_as_before() -> None:
    for fmt in ("PNG", "WEBP", "GIF"):
        data = encode(Image.new("RGB", (300, 200), (20, 200, 30)), fmt)
        pixels = np.frombuffer(to_model_input(data, SIZE, 10**9).pixels, np.uint8).reshape(SIZE, SIZE, 3)
        assert np.abs(pixels.astype(int) - (20, 200, 30)).max() <= 8, fmt
