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
again. An entry is a few hundred bytes (`tests/unit/test_prediction_cache.py` measures it):
the scores are kept as float32, as the model gave them (Avro writes `float`), a third of a
list of Python floats. The coalescing, expiry and eviction are `services/common/cache.py`'s.
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from services.common.cache import CoalescingCache
from services.common.cache import Lookup as Lookup

#: scores in label order, milliseconds of the Triton request that made them, images in it
Scored = tuple[list[float], float, int]


class Served(NamedTuple):
    scores: list[float]
    #: the Triton request's milliseconds and images; 0 and 0 for a hit, which made no request
    inference_ms: float
    batch_size: int
    lookup: Lookup


def key_prefix(model_name: str, model_version: str, pixel_format: str, height: int, width: int) -> hashlib._Hash:
    """A SHA-256 fed all of `pixels_key` but the pixels: `key_of(prefix, data)` completes it."""
    digest = hashlib.sha256(json.dumps([model_name, model_version, pixel_format, height, width]).encode())
    digest.update(b"\n")  # a JSON array ends at its bracket: nothing of `data` can pass for the header
    return digest


def key_of(prefix: hashlib._Hash, data: bytes | memoryview) -> bytes:
    """The cache key of `data` under a `key_prefix` (which is left as it was)."""
    digest = prefix.copy()
    digest.update(data)
    return digest.digest()


def pixels_key(
    model_name: str, model_version: str, pixel_format: str, height: int, width: int, data: bytes | memoryview
) -> bytes:
    """The cache key of an image's wire pixels for one model."""
    return key_of(key_prefix(model_name, model_version, pixel_format, height, width), data)


def _keep(scored: Scored) -> array[float]:
    return array("f", scored[0])


def _serve(scores: array[float]) -> Scored:
    return scores.tolist(), 0.0, 0  # no request scored a hit


class PredictionCache(CoalescingCache[bytes, Scored, "array[float]"]):
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        on_lookup: Callable[[Lookup], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            ttl_s=ttl_s,
            max_cost=max_entries,  # each entry costs 1
            keep=_keep,
            serve=_serve,
            cancel_when_abandoned=True,
            on_lookup=on_lookup,
            clock=clock,
        )

    @property
    def max_entries(self) -> int:
        return self.max_cost

    async def scores(self, key: bytes, infer: Callable[[], Awaitable[Scored]]) -> Served:
        """The scores for `key`: stored, shared with an inference under way, or from `infer()`.

        A waiter that is cancelled (its partition revoked) leaves the inference to the others;
        the last one to leave cancels it, so nobody's image is scored for nothing."""
        (scores, inference_ms, batch_size), lookup = await self.get(key, infer)
        # a list of each caller's own: a hit's is fresh already, the inference's is shared by its waiters
        return Served(scores if lookup is Lookup.HIT else list(scores), inference_ms, batch_size, lookup)
