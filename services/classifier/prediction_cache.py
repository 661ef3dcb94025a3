"""One inference per image: scores already computed for the same pixels by the same model.

Reposts and quote posts carry the same media, and the fetcher makes an image's wire bytes once
per URL, so every copy of an image reaches the classifier as the same bytes. `pixels_key`
hashes those bytes (with their format, size and the model's name and version);
`PredictionCache.scores` returns the scores stored under the key, joins an inference of the
same key already under way (concurrent copies share one Triton call), or starts one.

Why the wire bytes and not the decoded 224x224 array: both are sound keys (the same bytes
decode to the same array in this process, and the array alone decides the scores), but
hashing a 6-25 KB JPEG takes about 15 µs and spares a hit its decode, while the array is
150 KB to hash after a decode of about a millisecond. What the wire bytes miss are the same
pixels encoded differently (raw and JPEG, or two encoders during a fetcher upgrade): a lost
hit, never a wrong one. SHA-256, not a fast non-cryptographic hash: a post must not be able
to collide with a popular image's key and have its scores served for it.

Only successes are stored, for `ttl_s`, at most `max_entries` of them (the least recently
used go first); a failure reaches every record that waited on it and the next copy tries
again. An entry is a few hundred bytes (`tests/unit/test_prediction_cache.py` measures it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import NamedTuple

#: scores in label order, milliseconds of the Triton request that made them, images in it
Scored = tuple[list[float], float, int]


class Lookup(Enum):
    HIT = "hit"  # stored scores: no inference
    COALESCED = "coalesced"  # joined an inference of the same key under way
    MISS = "miss"  # started an inference


class Served(NamedTuple):
    scores: list[float]
    #: the Triton request's milliseconds and images; 0 and 0 for a hit, which made no request
    inference_ms: float
    batch_size: int
    lookup: Lookup


def pixels_key(
    model_name: str, model_version: str, pixel_format: str, height: int, width: int, data: bytes | memoryview
) -> bytes:
    """The cache key of an image's wire pixels for one model."""
    digest = hashlib.sha256(json.dumps([model_name, model_version, pixel_format, height, width]).encode())
    digest.update(b"\n")  # a JSON array ends at its bracket: nothing of `data` can pass for the header
    digest.update(data)
    return digest.digest()


class _Entry:
    __slots__ = ("expires_at", "scores")

    def __init__(self, scores: array[float], expires_at: float) -> None:
        self.scores = scores
        self.expires_at = expires_at


class _Inference:
    """An inference under way and how many records wait on it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Future[Scored]) -> None:
        self.task = task
        self.waiters = 0


class PredictionCache:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        on_lookup: Callable[[Lookup], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.on_lookup = on_lookup
        self.clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._under_way: dict[bytes, _Inference] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def scores(self, key: bytes, infer: Callable[[], Awaitable[Scored]]) -> Served:
        """The scores for `key`: stored, shared with an inference under way, or from `infer()`.

        A waiter that is cancelled (its partition revoked) leaves the inference to the others;
        the last one to leave cancels it, so nobody's image is scored for nothing."""
        entry = self._fresh(key)
        if entry is not None:
            self.on_lookup(Lookup.HIT)
            return Served(entry.scores.tolist(), 0.0, 0, Lookup.HIT)
        inference = self._under_way.get(key)
        if inference is None:
            lookup = Lookup.MISS
            inference = self._under_way[key] = _Inference(asyncio.ensure_future(infer()))
            inference.task.add_done_callback(lambda done: self._settle(key, done))
        else:
            lookup = Lookup.COALESCED
        self.on_lookup(lookup)
        inference.waiters += 1
        task = inference.task
        try:
            # shield: one waiter leaving must not cancel the inference the others wait for
            scores, inference_ms, batch_size = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() or inference.waiters > 1:
                raise
            # the last waiter leaves: no new record may join an inference that is being cancelled
            if self._under_way.get(key) is inference:
                del self._under_way[key]
            task.cancel()
            raise
        finally:
            inference.waiters -= 1
            # A failure's traceback holds this frame: without this, frame, task and failure would
            # form a cycle that keeps the failed batch's arrays until the garbage collector runs.
            del task
        return Served(list(scores), inference_ms, batch_size, lookup)

    def _fresh(self, key: bytes) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _settle(self, key: bytes, task: asyncio.Future[Scored]) -> None:
        current = self._under_way.get(key)
        if current is not None and current.task is task:
            del self._under_way[key]
        if task.cancelled() or task.exception() is not None:
            return  # a failure is not kept: the next copy of the image tries again
        if self.max_entries <= 0 or self.ttl_s <= 0:
            return
        now = self.clock()
        # float32 as the model gave them (Avro writes `float`): a third of a tuple of Python floats
        self._entries[key] = _Entry(array("f", task.result()[0]), now + self.ttl_s)
        self._entries.move_to_end(key)
        # least recently used first while over the bound, and expired ones at that end anyway
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self.max_entries and oldest.expires_at > now:
                break
            self._entries.popitem(last=False)
