"""Decode memory: the estimate made from an image's header is checked against the peak RSS its
decode really adds, format by format and mode by mode, each in a process of its own
(tests/fetcher/memory.py); decode bombs are refused before decoding; decodes under way share
one budget, so several at once stay within it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from services.fetcher.imaging import ImageError, decode_memory, open_image, to_model_input
from services.fetcher.settings import FetcherSettings
from tests.fetcher.support import encode
from tools import hostile_images

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
WIDTH, HEIGHT = 3000, 2000  # 6 megapixels: the decode's memory is well above the process's noise


def picture(mode: str) -> Image.Image:
    """Smooth content: cheap to make and encode, and the decode's memory does not depend on it."""
    grey = Image.linear_gradient("L").resize((WIDTH, HEIGHT))
    if mode == "L":
        return grey
    rgb = Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))
    if mode in ("RGBA", "LA"):
        with_alpha = rgb.convert(mode)
        with_alpha.putalpha(grey)
        return with_alpha
    return rgb.convert(mode)


def flat(mode: str, colour: Any = 0) -> Image.Image:
    return Image.new(mode, (WIDTH, HEIGHT), colour)


def palette(transparent: bool) -> bytes:
    image = picture("RGB").convert("P")
    return encode(image, "PNG", compress_level=1, **({"transparency": 0} if transparent else {}))


# (name, maker of the file): every format and every mode path of the decoder
CASES: list[tuple[str, Callable[[], bytes]]] = [
    ("jpeg-baseline", lambda: encode(picture("RGB"), "JPEG", quality=90)),
    ("jpeg-grey", lambda: encode(picture("L"), "JPEG")),
    ("jpeg-cmyk", lambda: encode(picture("CMYK"), "JPEG")),
    ("jpeg-progressive-420", lambda: encode(picture("RGB"), "JPEG", progressive=True)),
    ("jpeg-progressive-444", lambda: encode(picture("RGB"), "JPEG", progressive=True, subsampling=0)),
    ("jpeg-progressive-cmyk", lambda: encode(picture("CMYK"), "JPEG", progressive=True)),
    ("jpeg-progressive-grey", lambda: encode(picture("L"), "JPEG", progressive=True)),
    ("png-rgb", lambda: encode(picture("RGB"), "PNG", compress_level=1)),
    ("png-rgb-interlaced", lambda: encode(picture("RGB"), "PNG", compress_level=1, interlace=1)),
    ("png-rgba", lambda: encode(picture("RGBA"), "PNG", compress_level=1)),
    ("png-grey", lambda: encode(picture("L"), "PNG", compress_level=1)),
    ("png-grey-alpha", lambda: encode(picture("LA"), "PNG", compress_level=1)),
    ("png-bilevel", lambda: encode(picture("L").convert("1"), "PNG", compress_level=1)),
    ("png-palette", lambda: palette(False)),
    ("png-palette-transparency", lambda: palette(True)),
    ("png-16bit-grey", lambda: hostile_images.png_16bit_grey_bomb(WIDTH, HEIGHT)),
    ("gif", lambda: encode(flat("P"), "GIF")),
    ("gif-transparency", lambda: encode(flat("P"), "GIF", transparency=0)),
    ("gif-grey", lambda: encode(flat("L", 90), "GIF")),
    ("webp-lossy", lambda: encode(flat("RGB", (10, 90, 30)), "WEBP", quality=50)),
    ("webp-lossless", lambda: hostile_images.webp_lossless_bomb(WIDTH, HEIGHT)),
    ("webp-alpha", lambda: encode(picture("RGBA"), "WEBP", quality=50)),
]


def run_measured(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fetcher.memory", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("name", "make"), CASES, ids=[name for name, _ in CASES])
def test_the_estimate_covers_the_measured_peak_and_not_by_much(
    name: str, make: Callable[[], bytes], tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(make())
    figures = run_measured("estimate", str(path), "224")
    estimate, peak = figures["estimate"], figures["peak"]
    assert peak <= estimate, f"{name}: decoding took {peak / MIB:.1f} MiB, estimated {estimate / MIB:.1f} MiB"
    # Not so far above that ordinary images are refused or kept waiting for nothing.
    assert estimate <= 1.35 * peak + 8 * MIB, f"{name}: estimated {estimate / MIB:.1f} MiB for {peak / MIB:.1f}"


def test_reduced_scale_jpeg_decodes_are_estimated_at_their_reduced_size() -> None:
    data = encode(flat("RGB", (200, 10, 10)), "JPEG")
    with open_image(data, 224, 10**9) as opened:
        assert (opened.source_width, opened.source_height) == (WIDTH, HEIGHT)
        assert opened.image.size == (375, 250)  # 1/8 scale: its short side still >= 224
        full_scale = decode_memory(
            "JPEG", "RGB", (WIDTH, HEIGHT), palette_transparency=False, coefficient_bytes=0, header_bytes=0, size=224
        )
        assert opened.memory_bytes < full_scale / 8


def test_a_progressive_jpeg_counts_its_full_size_coefficients_at_any_scale() -> None:
    baseline = encode(flat("RGB"), "JPEG")
    progressive = encode(flat("RGB"), "JPEG", progressive=True)
    with open_image(baseline, 224, 10**9) as plain, open_image(progressive, 224, 10**9) as layered:
        # 4:2:0: 1.5 samples a pixel at 2 bytes each
        extra = layered.memory_bytes - plain.memory_bytes
        assert extra == pytest.approx(3 * WIDTH * HEIGHT, rel=0.02)


@pytest.mark.parametrize("name", sorted(hostile_images.DECODE_BOMBS))
def test_decode_bombs_are_refused_before_decoding_with_their_own_reason(name: str) -> None:
    data = hostile_images.DECODE_BOMBS[name]()
    settings = FetcherSettings()
    with pytest.raises(ImageError) as info:
        to_model_input(data, settings.image_size, settings.max_pixels, settings.max_image_memory_bytes)
    assert info.value.reason == "too_much_memory"
    assert "MiB" in info.value.detail


def test_decode_bombs_cost_their_estimate_when_let_through(tmp_path: Path) -> None:
    """The measured cost of one bomb, the 16-bit PNG, when nothing refuses it: this is what the
    refusal saves, and the estimate covers it."""
    path = tmp_path / "bomb.png"
    path.write_bytes(hostile_images.png_16bit_grey_bomb())
    figures = run_measured("estimate", str(path), "224")
    assert figures["peak"] > 300 * MIB
    assert figures["peak"] <= figures["estimate"]


def test_decodes_under_way_share_one_budget(tmp_path: Path) -> None:
    """Four images of about 60 MiB each to decode, four decode workers, a shared budget of 80 MiB:
    they decode one at a time, and the process's peak stays within the budget. Without the
    budget, the four decode at once and take about 240 MiB."""
    side = 2500  # 16-bit grey: about 10 bytes a pixel to decode
    for n in range(4):
        (tmp_path / f"{n}.png").write_bytes(hostile_images.png_16bit_grey_bomb(side, side + n))
    settings = {
        "decode_workers": 4,
        "max_image_memory_bytes": 70 * MIB,
        "max_decode_memory_bytes": 80 * MIB,
        "image_encoding": "raw",
    }
    figures = run_measured("pipeline", str(tmp_path), json.dumps(settings))
    assert figures["outcomes"] == {"ok": 4}
    assert figures["decode_budget_held_most"] <= 80 * MIB
    assert figures["peak"] <= 80 * MIB + 16 * MIB, f"peak {figures['peak'] / MIB:.0f} MiB"


def test_an_image_under_the_cap_decodes_as_before() -> None:
    data = encode(picture("RGB").resize((600, 400)), "PNG")
    result = to_model_input(data, 224, 50_000_000, 160 * MIB)
    assert (result.source_width, result.source_height) == (600, 400)
    with open_image(data, 224, 50_000_000) as opened:
        assert 600 * 400 * 4 < opened.memory_bytes < 8 * MIB


def test_text_chunks_are_bounded_before_any_estimate() -> None:
    """PNG text is inflated while the header is read, before the estimate exists: Pillow would
    keep up to 64 MB of it; here a few MB are refused as corrupt."""
    data = hostile_images.png_text_chunks_bomb(chunks=8, inflated_each=900_000)
    assert len(data) < 100_000
    with pytest.raises(ImageError) as info:
        open_image(data, 224, 10**9, 160 * MIB)
    assert info.value.reason == "corrupt_image"
