"""Fuzzing the image decoders: mutated real images (JPEG, PNG, WebP, GIF; bit flips, truncations,
overwritten bytes, width and height fields set to anything) through the fetcher's decode
(`to_model_input`, and the pipeline's decode path with its wire encoding) and the classifier's
pixel decode. Nothing may come out but an image of the promised shape or a refusal with a
reason, and the process's peak RSS over each decode stays within the memory cap it was given.

`make test` runs the `test` profile, `make fuzz` the `fuzz` one (tests/conftest.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from services.common import pixels
from services.fetcher.imaging import ImageError, ModelInput, to_model_input
from services.fetcher.limits import ByteBudget
from services.fetcher.pipeline import decode_if_room

pytestmark = pytest.mark.fuzz
T = TypeVar("T")
E = TypeVar("E", bound=Exception)
Order = Literal["big", "little"]

MIB = 1024 * 1024
SIZE = 224
MAX_PIXELS = 4_000_000
MAX_MEMORY = 24 * MIB
# Above the cap: what the process does around a decode besides the decode itself (the
# interpreter, the wire JPEG, Pillow's small buffers), measured at about 2 MiB.
SLACK = 8 * MIB
FETCHER_REASONS = {"unsupported_type", "too_many_pixels", "too_much_memory", "corrupt_image"}
PIXEL_REASONS = {"wrong_size", "undecodable", "unknown_format"}


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    photo = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    photo.paste((200, 30, 30), (10, 10, 40, 30))
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    transparent = photo.convert("P")
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "baseline.jpg": _save(photo, "JPEG", quality=80, exif=exif.tobytes()),
        "progressive.jpg": _save(photo, "JPEG", progressive=True),
        "cmyk.jpg": _save(photo.convert("CMYK"), "JPEG"),
        "rgb.png": _save(photo, "PNG"),
        "palette-transparency.png": _save(transparent, "PNG", transparency=0),
        "interlaced-rgba.png": _save(photo.convert("RGBA"), "PNG", interlace=1),
        "grey-16bit.png": _save(Image.new("I;16", (64, 48), 40_000), "PNG"),
        "lossy.webp": _save(photo, "WEBP", quality=60),
        "animated-lossless.webp": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0),
    }


SEEDS = _seeds()
WIRE_JPEG = pixels.encode(to_model_input(SEEDS["baseline.jpg"], SIZE, MAX_PIXELS).pixels, SIZE, "jpeg")[1]


def dimension_fields(data: bytes) -> list[tuple[int, int, Order]]:
    """(offset, bytes, byte order) of every width and height field in the header of `data`."""
    if data.startswith(b"\x89PNG"):
        return [(16, 4, "big"), (20, 4, "big")]
    if data.startswith(b"GIF"):
        frame = data.index(b"\x2c", 13)
        return [(6, 2, "little"), (8, 2, "little"), (frame + 5, 2, "little"), (frame + 7, 2, "little")]
    if data.startswith(b"RIFF"):
        chunk = data[12:16]
        if chunk == b"VP8X":
            return [(24, 3, "little"), (27, 3, "little")]
        if chunk == b"VP8L":
            return [(21, 4, "little")]  # 14 bits each, packed
        return [(26, 2, "little"), (28, 2, "little")]
    fields: list[tuple[int, int, Order]] = []
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        start = data.find(marker)
        if start > 0:
            fields += [(start + 5, 2, "big"), (start + 7, 2, "big")]
    return fields


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    fields = dimension_fields(bytes(data))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # the header is where a parser decides what to allocate: most mutations land there
        position = draw(st.one_of(st.integers(0, min(len(data), 96) - 1), st.integers(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "truncate", "overwrite", "dimension"]))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(patch)] = patch
        elif fields:
            offset, width, order = draw(st.sampled_from(fields))
            limit = 256**width - 1
            value = draw(st.one_of(st.integers(0, limit), st.sampled_from([0, 1, 224, 2000, 7071, 65535 & limit])))
            data[offset : offset + width] = value.to_bytes(width, order)
    return bytes(data)


class PeakMemory:
    """The process's peak RSS over a block, above its RSS at the start (VmHWM, reset there)."""

    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

    def __enter__(self) -> PeakMemory:
        self._libc.malloc_trim(0)  # freed memory back to the system first, so it is not reused unseen
        Path("/proc/self/clear_refs").write_text("5")
        self.start = self._read("VmRSS")
        return self

    def __exit__(self, *_: object) -> None:
        self.added = self._read("VmHWM") - self.start

    @staticmethod
    def _read(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")


def attempt(work: Callable[[], T], refusal: type[E]) -> T | E:
    """What `work` returns, or the refusal it raises; anything else it raises fails the test."""
    try:
        return work()
    except refusal as exc:
        return exc


def check_refusal(outcome: object, reasons: set[str]) -> bool:
    """Whether `outcome` is a refusal, after checking it says why."""
    if isinstance(outcome, ImageError | pixels.PixelError):
        assert outcome.reason in reasons, outcome
        assert outcome.detail, outcome
        return True
    return False


@given(mutated(SEEDS))
def test_the_fetcher_decode_gives_an_image_or_a_reason_within_its_memory(data: bytes) -> None:
    with PeakMemory() as memory:
        outcome = attempt(lambda: to_model_input(data, SIZE, MAX_PIXELS, MAX_MEMORY), ImageError)
    if not check_refusal(outcome, FETCHER_REASONS):
        assert isinstance(outcome, ModelInput)
        assert len(outcome.pixels) == SIZE * SIZE * 3
    assert memory.added <= MAX_MEMORY + SLACK, f"{memory.added / MIB:.1f} MiB for {len(data)} bytes"


@given(mutated(SEEDS))
def test_the_pipeline_decode_path_gives_a_wire_image_the_classifier_reads(data: bytes) -> None:
    """The worker functions the pipeline runs, with the wire JPEG: what the fetcher accepts, the
    classifier decodes to exactly the model's shape."""

    def decode_path() -> ModelInput:
        budget = ByteBudget(MAX_MEMORY)
        with budget.allowance() as allowance:
            done = decode_if_room(data, SIZE, MAX_PIXELS, MAX_MEMORY, "jpeg", allowance, time.monotonic())
            assert done.needed <= MAX_MEMORY
            assert done.image is not None  # the budget was empty: it decoded on the first trip
            assert budget.used == done.needed
        assert budget.used == 0
        return done.image

    with PeakMemory() as memory:
        outcome = attempt(decode_path, ImageError)
    if not check_refusal(outcome, FETCHER_REASONS):
        assert isinstance(outcome, ModelInput)
        assert outcome.pixel_format == pixels.JPEG
        assert pixels.decode(outcome.pixel_format, outcome.pixels, SIZE, SIZE).shape == (SIZE, SIZE, 3)
    assert memory.added <= MAX_MEMORY + SLACK, f"{memory.added / MIB:.1f} MiB for {len(data)} bytes"


@given(mutated({"wire.jpg": WIRE_JPEG}), st.sampled_from([pixels.JPEG, pixels.RAW, "PNG"]))
def test_the_classifier_pixel_decode_gives_the_shape_or_a_reason(data: bytes, pixel_format: str) -> None:
    """A record's pixels are untrusted too: whatever they hold, the classifier gets a 224x224x3
    array or a PixelError with a reason, and never decodes more than that size."""
    with PeakMemory() as memory:
        outcome = attempt(lambda: pixels.decode(pixel_format, data, SIZE, SIZE), pixels.PixelError)
    if not check_refusal(outcome, PIXEL_REASONS):
        assert isinstance(outcome, np.ndarray)
        assert outcome.shape == (SIZE, SIZE, 3)
    # a 224x224 JPEG decodes in well under a megabyte, its coefficients included
    assert memory.added <= 4 * MIB, f"{memory.added / MIB:.1f} MiB for {len(data)} bytes"


def test_every_seed_decodes_unmutated() -> None:
    """The mutations start from images the decoders accept, so what they find is the mutation's."""
    for name, data in SEEDS.items():
        assert len(to_model_input(data, SIZE, MAX_PIXELS, MAX_MEMORY).pixels) == SIZE * SIZE * 3, name
        assert dimension_fields(data), name
    assert pixels.decode(pixels.JPEG, WIRE_JPEG, SIZE, SIZE).shape == (SIZE, SIZE, 3)


def test_the_dimension_fields_are_where_the_decoders_read_them() -> None:
    """Setting each field found changes the size the decoder reports: the mutation hits the header."""
    for name, data in SEEDS.items():
        for offset, width, order in dimension_fields(data):
            changed = bytearray(data)
            value = int.from_bytes(data[offset : offset + width], order) ^ 0x10
            changed[offset : offset + width] = value.to_bytes(width, order)
            try:
                with Image.open(io.BytesIO(bytes(changed))) as image:
                    size = image.size
            except (OSError, SyntaxError, ValueError, struct.error):
                continue  # a header that no longer parses has been hit too
            with Image.open(io.BytesIO(data)) as original:
                assert size != original.size, f"{name}: field at {offset} is not a dimension"
