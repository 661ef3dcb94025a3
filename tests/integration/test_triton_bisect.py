"""A record Triton refuses goes to the DLQ alone: its batch is bisected, the others are scored.

The model is this test's own (Python backend, served by a Triton of its own on free ports):
it refuses, with Triton's INVALID_ARG, any request that holds a marked image, and scores the
others so that each image's scores name it (the top label is its first byte modulo 27).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from services.classifier.batcher import MicroBatcher
from services.classifier.triton import TritonModel
from services.common import pixels
from services.common.errors import RecordError

from .processes import ROOT, Triton, free_port, fresh_topics, service, wait_until
from .test_classifier import classifier_env, consume, image_record, produce
from .test_pipeline import dead_letters

pytestmark = pytest.mark.integration

MODEL = "reject_marked"
MARK = b"REJECT"
LABELS = ROOT / "model_repository" / "cpu" / "resnet50" / "labels.txt"
CLASSES = len(LABELS.read_text().split())

CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: 64
input [ {{ name: "image", data_type: TYPE_UINT8, dims: [ 224, 224, 3 ] }} ]
output [ {{ name: "scores", data_type: TYPE_FP32, dims: [ {CLASSES} ], label_filename: "labels.txt" }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""

MODEL_PY = f"""
import numpy as np
import triton_python_backend_utils as pb_utils

MARK = {MARK!r}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            flat = images.reshape(len(images), -1)
            if any(row[: len(MARK)].tobytes() == MARK for row in flat):
                error = pb_utils.TritonError("a marked image", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            scores = np.full((len(images), {CLASSES}), 0.5 / ({CLASSES} - 1), dtype=np.float32)
            scores[np.arange(len(images)), flat[:, 0] % {CLASSES}] = 0.5
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("scores", scores)]))
        return responses
"""


def image(identity: int, marked: bool = False) -> npt.NDArray[np.uint8]:
    array = np.zeros((224, 224, 3), dtype=np.uint8)
    array.reshape(-1)[0] = identity
    if marked:
        array.reshape(-1)[: len(MARK)] = np.frombuffer(MARK, dtype=np.uint8)
    return array


def top_label(identity: int) -> int:
    return identity % CLASSES


@pytest.fixture(scope="module")
def rejecting_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    root = tmp_path_factory.mktemp("bisect")
    model_dir = root / "models" / MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG)
    (model_dir / "labels.txt").write_text(LABELS.read_text())
    (model_dir / "1" / "model.py").write_text(MODEL_PY)
    triton = Triton(root / "run", root / "models", ready_model=MODEL)
    triton.start()
    yield triton
    triton.stop()


Pixels = npt.NDArray[np.uint8]
Scores = npt.NDArray[np.float32]


async def score_through_the_batcher(url: str, images: list[Pixels]) -> list[Scores | BaseException]:
    model = TritonModel(url, MODEL, timeout_s=30)
    try:
        assert await model.wait_until_ready(asyncio.Event()) is not None

        async def infer(batch: Sequence[Pixels]) -> list[Scores]:
            return list(await model.infer(batch))

        batcher: MicroBatcher[Pixels, Scores] = MicroBatcher(
            infer, max_batch=len(images), max_wait_s=0.2, max_concurrent=1
        )
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in images), return_exceptions=True))
        finally:
            await batcher.close()
    finally:
        await model.close()


def test_only_the_refused_images_fail_and_the_others_keep_their_own_scores(rejecting_triton: Triton) -> None:
    marked = {2, 5}
    images = [image(10 + i, marked=i in marked) for i in range(8)]
    results = asyncio.run(score_through_the_batcher(rejecting_triton.grpc_url, images))
    for i, result in enumerate(results):
        if i in marked:
            assert isinstance(result, RecordError), result
            assert result.reason == "inference_rejected"
            assert "a marked image" in result.detail
        else:
            assert isinstance(result, np.ndarray), result
            assert int(np.argmax(result)) == top_label(10 + i)


def test_the_classifier_dead_letters_the_refused_record_and_publishes_the_rest(
    kafka: None, rejecting_triton: Triton, tmp_path: Path
) -> None:
    topics = fresh_topics("images", "predictions")
    dead_letter_topic(topics[0] + ".dlq")
    marked = {3, 12, 13}
    records = [
        image_record(str(30_000 + i), image(40 + i, marked=i in marked).tobytes()) | {"pixel_format": pixels.RAW}
        for i in range(16)
    ]
    produce(topics[0], records)  # all waiting before the classifier starts, so batches fill up
    port = free_port()
    env = classifier_env(topics, rejecting_triton.grpc_url, MODEL, port) | {
        "CLASSIFIER_MAX_BATCH_SIZE": "8",
        # The marked images are the same pixels: with the prediction cache on they would share one
        # inference and its refusal, and no batch need be split for each of them.
        "CLASSIFIER_PREDICTION_CACHE_TTL_S": "0",
    }
    with service("classifier", env, tmp_path / "classifier.log", port):
        predictions = consume(topics[1], len(records) - len(marked), timeout_s=120)
        letters = dead_letters(topics[0] + ".dlq", {r["tweet_id"] for r in records}, expected=len(marked))
        wait_until("the refused requests are counted", lambda: refused_requests(port) > len(marked), 30)

    good = {r["tweet_id"]: 40 + i for i, r in enumerate(records) if i not in marked}
    assert sorted(p["tweet_id"] for p in predictions) == sorted(good)
    labels = LABELS.read_text().split()
    for prediction in predictions:
        scores = [prediction["scores"][label] for label in labels]
        assert int(np.argmax(scores)) == top_label(good[prediction["tweet_id"]])
    assert sorted(letter["key"] for letter in letters) == sorted(records[i]["tweet_id"] for i in marked)
    for letter in letters:
        assert letter["headers"]["error"] == b"inference_rejected"


def dead_letter_topic(name: str) -> None:
    """The input's DLQ: the broker creates no topic by itself, and the stack's are not this test's."""
    admin = AdminClient({"bootstrap.servers": "localhost:9092"})
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)]).values():
        future.result(30)


def refused_requests(port: int) -> float:
    """Requests Triton refused, as the classifier counts them: more than the marked records
    means records were refused in company and the batch was split."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tagstream_triton_request_errors_total{") and "INVALID_ARGUMENT" in line
    )
