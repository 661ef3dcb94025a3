"""`python -m services.classifier`: images → predictions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common import pixels, runtime
from services.common.avro import IMAGES, PREDICTIONS
from services.common.stream import Output, RecordError, run_stream
from services.common.timeutil import now_ms

from .batcher import MicroBatcher
from .hashtags import HashtagConfig, load_rules, suggest
from .settings import ClassifierSettings
from .triton import ModelSignature, TritonModel

Pixels = npt.NDArray[np.uint8]
Scored = tuple[npt.NDArray[np.float32], float, int]  # scores, request milliseconds, batch size


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

    async def _infer(self, images: Sequence[Pixels]) -> list[Scored]:
        started = time.monotonic()
        scores = await self.model.infer(images)
        elapsed_ms = (time.monotonic() - started) * 1000
        return [(row, elapsed_ms, len(images)) for row in scores]

    async def handle(self, image: dict[str, Any]) -> list[Output]:
        shape = (image["height"], image["width"], 3)
        if shape != self.signature.input_shape:
            raise RecordError("bad_shape", f"{shape} does not fit the model's {self.signature.input_shape}")
        try:
            if image["pixel_format"] == pixels.RAW:  # a view of the bytes: not worth a thread
                array = pixels.decode(pixels.RAW, image["pixels"], *shape[:2])
            else:
                array = await asyncio.get_running_loop().run_in_executor(
                    self.decode_pool, pixels.decode, image["pixel_format"], image["pixels"], *shape[:2]
                )
        except pixels.PixelError as exc:
            raise RecordError("bad_pixels", str(exc)) from exc
        scores, inference_ms, batch_size = await self.batcher.submit(array)
        prediction = {
            "tweet_id": image["tweet_id"],
            "media_key": image["media_key"],
            "image_url": image["image_url"],
            "post_url": image["post_url"],
            "text": image["text"],
            "author_username": image["author_username"],
            "priority": image["priority"],
            "hashtags": [{"hashtag": tag, "score": score} for tag, score in suggest(scores.tolist(), self.tags)],
            "scores": {c.label: float(s) for c, s in zip(self.tags.classes, scores.tolist(), strict=True)},
            "model_name": self.signature.name,
            "model_version": self.signature.version,
            "ingest_ts_ms": image["ingest_ts_ms"],
            "fetch_ts_ms": image["fetch_ts_ms"],
            "classify_ts_ms": now_ms(),
            "inference_ms": inference_ms,
            "batch_size": batch_size,
        }
        return [Output(self.settings.output_topic, PREDICTIONS.encode(prediction), key=image["tweet_id"])]


async def _service(rt: runtime.Runtime) -> None:
    settings = ClassifierSettings()
    rules = load_rules(settings.hashtags_file)
    model = TritonModel(settings.triton_url, settings.model_name, settings.model_version, settings.request_timeout_s)
    rt.health.add_check(lambda: None if model.signature else f"model {settings.model_name} not ready on Triton")
    try:
        signature = await model.wait_until_ready(rt.stop)
        if signature is None:
            return
        classifier = Classifier(settings, model, signature, rules.for_labels(signature.labels))
        try:
            await run_stream(rt, settings, IMAGES, classifier.handle)
        finally:
            await classifier.batcher.close()
            classifier.decode_pool.shutdown()
    finally:
        await model.close()


def main() -> None:
    runtime.run("classifier", ClassifierSettings(), _service)


if __name__ == "__main__":
    main()
