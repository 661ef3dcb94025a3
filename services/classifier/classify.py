"""The classifier's handler: one `images` record in, one `predictions` record out.

Pixels are decoded off the event loop (raw pixels are only a view), gathered into
micro-batches for Triton (`batcher.py`), and each image's scores turned into hashtags
(`hashtags.py`). The record's `origin` is copied as is. In front of all that, the prediction
cache (`prediction_cache.py`) serves an image it has scored already, a repost's, without
decoding or inferring it again; such a prediction says so with `batch_size` 0 and
`inference_ms` 0: no request scored it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common import pixels
from services.common.avro import PREDICTIONS
from services.common.errors import RecordError
from services.common.process import Output
from services.common.timeutil import now_ms

from . import metrics
from .batcher import MicroBatcher
from .hashtags import HashtagConfig, suggest
from .prediction_cache import Lookup, PredictionCache, Scored, key_of, key_prefix
from .settings import ClassifierSettings
from .triton import ModelSignature, TritonModel

Pixels = npt.NDArray[np.uint8]

#: wire pixels up to this size are hashed on the event loop (a JPEG: about 15 µs); larger ones
#: (raw pixels, 150 KB: about 160 µs) in a decode worker, where hashlib lets the loop go on
HASH_ON_LOOP_MAX_BYTES = 64 * 1024


class Classifier:
    def __init__(
        self, settings: ClassifierSettings, model: TritonModel, signature: ModelSignature, tags: HashtagConfig
    ) -> None:
        self.settings = settings
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self.model = model
        self.signature = signature
        self.tags = tags
        self.batcher: MicroBatcher[Pixels, Scored] = MicroBatcher(
            self._infer, settings.max_batch_size, settings.max_batch_wait_ms / 1000, settings.max_requests_in_flight
        )
        self.cache: PredictionCache | None = None
        if settings.prediction_cache_enabled:
            lookups = {how: metrics.CACHE_LOOKUPS.labels(how.value) for how in Lookup}
            self.cache = PredictionCache(
                ttl_s=settings.prediction_cache_ttl_s,
                max_entries=settings.prediction_cache_max_entries,
                on_lookup=lambda how: lookups[how].inc(),
            )
            metrics.CACHE_ENTRIES.set_function(self.cache.__len__)
        #: per pixel format, a SHA-256 already fed the key's header (model, format and size)
        self._key_prefixes: dict[str, hashlib._Hash] = {}

    async def close(self) -> None:
        await self.batcher.close()
        self.decode_pool.shutdown()

    async def _infer(self, images: Sequence[Pixels]) -> list[Scored]:
        started = time.monotonic()
        scores = await self.model.infer(images)
        elapsed_ms = (time.monotonic() - started) * 1000
        # Python floats for the whole batch in one call: each image's row is then read twice
        # (hashtags, every label's score) without touching numpy again.
        return [(row, elapsed_ms, len(images)) for row in scores.tolist()]

    async def handle(self, image: dict[str, Any]) -> list[Output]:
        shape = (image["height"], image["width"], 3)
        if shape != self.signature.input_shape:
            raise RecordError("bad_shape", f"{shape} does not fit the model's {self.signature.input_shape}")
        if self.cache is None:
            scores, inference_ms, batch_size = await self._score(image)
        else:
            served = await self.cache.scores(await self._cache_key(image), lambda: self._score(image))
            scores, inference_ms, batch_size = served.scores, served.inference_ms, served.batch_size
        prediction = {
            "origin": image["origin"],
            "hashtags": [{"hashtag": tag, "score": score} for tag, score in suggest(scores, self.tags)],
            "scores": dict(zip(self.signature.labels, scores, strict=True)),
            "model_name": self.signature.name,
            "model_version": self.signature.version,
            "model_weights_meaningful": self.signature.weights_meaningful,
            "fetch_ts_ms": image["fetch_ts_ms"],
            "classify_ts_ms": now_ms(),
            "inference_ms": inference_ms,
            "batch_size": batch_size,
        }
        return [Output(self.settings.output_topic, PREDICTIONS.encode(prediction), key=image["origin"]["tweet_id"])]

    async def _score(self, image: dict[str, Any]) -> Scored:
        """Decode the record's pixels and have them scored in a batch."""
        height, width = image["height"], image["width"]
        try:
            if image["pixel_format"] == pixels.RAW:  # a view of the bytes: not worth a thread
                array = pixels.decode(pixels.RAW, image["pixels"], height, width)
            else:
                array = await asyncio.get_running_loop().run_in_executor(
                    self.decode_pool, pixels.decode, image["pixel_format"], image["pixels"], height, width
                )
        except pixels.PixelError as exc:
            raise RecordError("bad_pixels", str(exc)) from exc
        return await self.batcher.submit(array)

    async def _cache_key(self, image: dict[str, Any]) -> bytes:
        """`pixels_key` of the record's pixels; its height and width are the model's (`handle`
        checked them), so the header only varies with the pixel format."""
        pixel_format, data = image["pixel_format"], image["pixels"]
        prefix = self._key_prefixes.get(pixel_format)
        if prefix is None:
            sig = self.signature
            prefix = key_prefix(sig.name, sig.version, pixel_format, image["height"], image["width"])
            if pixel_format in (pixels.RAW, pixels.JPEG):  # not any string a record may carry
                self._key_prefixes[pixel_format] = prefix
        if len(data) <= HASH_ON_LOOP_MAX_BYTES:
            return key_of(prefix, data)
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, key_of, prefix, data)
