"""The classifier's prediction cache: one inference per image, for a while, per model."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections import Counter
from typing import cast

import numpy as np
import pytest

from services.classifier.classify import HASH_ON_LOOP_MAX_BYTES, Classifier
from services.classifier.hashtags import HashtagConfig
from services.classifier.prediction_cache import Lookup, PredictionCache, Scored, Served, pixels_key
from services.classifier.settings import ClassifierSettings
from services.classifier.triton import ModelSignature, TritonModel
from services.common import pixels
from services.common.errors import RecordError, RetryableError

CLASSES = 27


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Model:
    """Scores as a model would give them (float32, one row per image), counting its calls."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def infer(self, key: bytes, batch_size: int = 4, inference_ms: float = 12.5) -> Scored:
        self.calls.append(key)
        row = np.frombuffer(key[:CLASSES].ljust(CLASSES, b"\0"), np.uint8).astype(np.float32) / 255
        return row.tolist(), inference_ms, batch_size

    async def scorer(self, key: bytes) -> Scored:
        return self.infer(key)


def cache(clock: Clock | None = None, **bounds: float) -> tuple[PredictionCache, Counter[Lookup]]:
    lookups: Counter[Lookup] = Counter()
    made = PredictionCache(
        ttl_s=bounds.get("ttl_s", 60.0),
        max_entries=int(bounds.get("max_entries", 100)),
        on_lookup=lambda how: lookups.update([how]),
        clock=clock or Clock(),
    )
    return made, lookups


def key(n: int, model: tuple[str, str] = ("resnet50", "1")) -> bytes:
    return pixels_key(*model, "JPEG", 224, 224, f"image {n}".encode())


async def lookup(c: PredictionCache, model: Model, k: bytes) -> Served:
    return await c.scores(k, lambda: model.scorer(k))


async def test_a_second_copy_is_served_from_the_cache_without_an_inference() -> None:
    c, lookups = cache()
    model = Model()
    first = await lookup(c, model, key(1))
    second = await lookup(c, model, key(1))
    assert model.calls == [key(1)]
    assert (first.lookup, first.batch_size, first.inference_ms) == (Lookup.MISS, 4, 12.5)
    # no request scored the copy: its prediction says so
    assert (second.lookup, second.batch_size, second.inference_ms) == (Lookup.HIT, 0, 0.0)
    assert second.scores == first.scores  # the model's float32 values, exactly
    assert lookups == {Lookup.MISS: 1, Lookup.HIT: 1}


async def test_other_pixels_are_inferred() -> None:
    c, lookups = cache()
    model = Model()
    first, other = await lookup(c, model, key(1)), await lookup(c, model, key(2))
    assert model.calls == [key(1), key(2)]
    assert first.scores != other.scores
    assert lookups == {Lookup.MISS: 2}


async def test_an_entry_expires_after_its_ttl() -> None:
    clock = Clock()
    c, _ = cache(clock, ttl_s=10)
    model = Model()
    await lookup(c, model, key(1))
    clock.now += 9.9
    assert (await lookup(c, model, key(1))).lookup is Lookup.HIT  # a hit does not extend it
    clock.now += 0.1
    assert (await lookup(c, model, key(1))).lookup is Lookup.MISS
    assert len(model.calls) == 2


async def test_the_least_recently_used_go_first_beyond_max_entries() -> None:
    c, _ = cache(max_entries=2)
    model = Model()
    await lookup(c, model, key(1))
    await lookup(c, model, key(2))
    await lookup(c, model, key(1))  # 1 is now the more recently used
    await lookup(c, model, key(3))  # over the bound: 2 goes
    assert len(c) == 2
    assert (await lookup(c, model, key(1))).lookup is Lookup.HIT
    assert (await lookup(c, model, key(3))).lookup is Lookup.HIT
    assert (await lookup(c, model, key(2))).lookup is Lookup.MISS


async def test_expired_entries_at_the_old_end_go_when_another_is_stored() -> None:
    clock = Clock()
    c, _ = cache(clock, ttl_s=10, max_entries=100)
    model = Model()
    for n in range(5):
        await lookup(c, model, key(n))
    clock.now += 10
    await lookup(c, model, key(99))
    assert len(c) == 1


def test_the_key_ties_the_pixels_to_the_model_their_format_and_size() -> None:
    data = b"\xff\xd8 some jpeg"
    base = pixels_key("resnet50", "1", "JPEG", 224, 224, data)
    assert base == pixels_key("resnet50", "1", "JPEG", 224, 224, bytes(data))
    assert base == pixels_key("resnet50", "1", "JPEG", 224, 224, memoryview(data))  # as Avro may hand it
    others = {
        pixels_key("resnet50", "2", "JPEG", 224, 224, data),  # a new version
        pixels_key("resnet101", "1", "JPEG", 224, 224, data),  # another model
        pixels_key("resnet50", "1", "RGB8_HWC", 224, 224, data),  # the bytes mean other pixels
        pixels_key("resnet50", "1", "JPEG", 112, 448, data),
        pixels_key("resnet50", "1", "JPEG", 224, 224, data + b"\0"),
        pixels_key("resnet5", "01", "JPEG", 224, 224, data),  # no field can run into the next
    }
    assert base not in others
    assert len(others) == 6


def test_the_key_is_a_sha256_of_a_json_header_then_the_pixels() -> None:
    data = b"\xff\xd8 some jpeg"
    expected = hashlib.sha256(b'["resnet50", "1", "JPEG", 224, 224]\n' + data).digest()
    assert pixels_key("resnet50", "1", "JPEG", 224, 224, data) == expected


async def test_the_classifier_s_key_from_a_kept_header_is_pixels_key() -> None:
    signature = ModelSignature("resnet50", "3", "input", "UINT8", (224, 224, 3), "output", ("a", "b"))
    classifier = Classifier(
        ClassifierSettings(prediction_cache_ttl_s=0, decode_workers=1),
        cast(TritonModel, None),
        signature,
        HashtagConfig(classes=(), top_k=1, fallback="others"),
    )
    try:
        raw = bytes(range(256)) * (224 * 224 * 3 // 256)
        assert len(raw) > HASH_ON_LOOP_MAX_BYTES  # hashed in a decode worker
        jpeg = b"\xff\xd8 a small jpeg"  # hashed on the loop
        for pixel_format, data in [(pixels.JPEG, jpeg), (pixels.RAW, raw), ("PNG", jpeg)] * 2:
            image = {"pixel_format": pixel_format, "height": 224, "width": 224, "pixels": data}
            expected = pixels_key("resnet50", "3", pixel_format, 224, 224, data)
            assert await classifier._cache_key(image) == expected  # the kept header is not changed by a key
            image["pixels"] = memoryview(data)
            assert await classifier._cache_key(image) == expected
        assert set(classifier._key_prefixes) == {pixels.JPEG, pixels.RAW}  # not a record's stray format
    finally:
        await classifier.close()


async def test_a_new_model_does_not_serve_the_old_model_s_scores() -> None:
    c, _ = cache()
    model = Model()
    pixels = b"the same pixels"
    old = pixels_key("resnet50", "1", "JPEG", 224, 224, pixels)
    new = pixels_key("resnet50", "2", "JPEG", 224, 224, pixels)
    await lookup(c, model, old)
    assert (await lookup(c, model, new)).lookup is Lookup.MISS
    assert model.calls == [old, new]


async def test_concurrent_copies_share_one_inference() -> None:
    c, lookups = cache()
    release = asyncio.Event()
    calls = 0

    async def slow() -> Scored:
        nonlocal calls
        calls += 1
        await release.wait()
        return [0.5] * CLASSES, 30.0, 8

    copies = [asyncio.create_task(c.scores(key(1), slow)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    served = await asyncio.gather(*copies)
    assert calls == 1
    assert lookups == {Lookup.MISS: 1, Lookup.COALESCED: 4}
    # each copy was in that request: it has its figures
    assert {(s.inference_ms, s.batch_size) for s in served} == {(30.0, 8)}
    assert (await c.scores(key(1), slow)).lookup is Lookup.HIT


@pytest.mark.parametrize(
    "failure", [RetryableError("Triton at localhost:8001: UNAVAILABLE"), RecordError("bad_pixels", "undecodable")]
)
async def test_a_failure_reaches_every_waiting_copy_and_is_not_cached(failure: Exception) -> None:
    c, lookups = cache()
    release = asyncio.Event()
    calls = 0

    async def failing() -> Scored:
        nonlocal calls
        calls += 1
        await release.wait()
        raise failure

    copies = [asyncio.create_task(c.scores(key(1), failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*copies, return_exceptions=True)
    assert all(r is failure for r in results)
    assert calls == 1
    assert len(c) == 0
    model = Model()
    assert (await lookup(c, model, key(1))).lookup is Lookup.MISS  # tried again
    assert model.calls == [key(1)]
    assert lookups == {Lookup.MISS: 2, Lookup.COALESCED: 2}


async def test_a_cancelled_copy_leaves_the_inference_to_the_others() -> None:
    c, _ = cache()
    release = asyncio.Event()

    async def slow() -> Scored:
        await release.wait()
        return [0.25] * CLASSES, 5.0, 2

    first = asyncio.create_task(c.scores(key(1), slow))
    second = asyncio.create_task(c.scores(key(1), slow))
    await asyncio.sleep(0)
    first.cancel()  # its partition was revoked
    await asyncio.sleep(0)
    release.set()
    assert (await second).scores == [0.25] * CLASSES
    assert first.cancelled()
    assert len(c) == 1


async def test_the_last_copy_leaving_cancels_the_inference_and_keeps_nothing() -> None:
    c, lookups = cache()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def never() -> Scored:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    only = asyncio.create_task(c.scores(key(1), never))
    await started.wait()
    only.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert only.cancelled()
    assert len(c) == 0
    # a copy arriving now starts an inference of its own, not a wait on the cancelled one
    model = Model()
    assert (await lookup(c, model, key(1))).lookup is Lookup.MISS
    assert lookups == {Lookup.MISS: 2}


async def test_a_copy_arriving_as_the_last_one_leaves_is_not_handed_the_cancellation() -> None:
    c, _ = cache()
    release = asyncio.Event()

    async def slow() -> Scored:
        await release.wait()
        return [0.75] * CLASSES, 1.0, 1

    leaving = asyncio.create_task(c.scores(key(1), slow))
    await asyncio.sleep(0)
    leaving.cancel()
    arriving = asyncio.create_task(c.scores(key(1), slow))  # before the cancellation is through
    await asyncio.sleep(0)
    release.set()
    assert (await asyncio.wait_for(arriving, 1)).scores == [0.75] * CLASSES
    assert leaving.cancelled()


async def test_memory_is_bounded_by_the_entries_a_few_hundred_bytes_each() -> None:
    c, _ = cache(max_entries=5_000)
    model = Model()
    await lookup(c, model, key(-1))  # the first entry's allocations are not an entry's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(10_000):
            await lookup(c, model, key(n))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(c) == 5_000
    per_entry = held / len(c)
    print(f"{per_entry:.0f} bytes per entry of {CLASSES} scores")
    assert per_entry < 600, per_entry  # README: 100,000 entries (the default) in about 55 MB


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, True),
        ({"CLASSIFIER_PREDICTION_CACHE_TTL_S": "0"}, False),
        ({"CLASSIFIER_PREDICTION_CACHE_MAX_ENTRIES": "0"}, False),
    ],
)
def test_zero_turns_the_cache_off(env: dict[str, str], enabled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ClassifierSettings().prediction_cache_enabled is enabled
