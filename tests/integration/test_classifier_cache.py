"""A repost's prediction without a Triton call: the classifier's prediction cache on a real Triton.

The Triton is the test's own, serving a model whose scores are means of the pixels (so a
prediction served for the wrong image would show), and Triton's own counters say how many
images it was asked to score.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common import pixels

from .processes import Triton, free_port, fresh_topics, metric, service
from .test_classifier import MODELS, classifier_env, consume, image_record, photo_pixels, produce

pytestmark = pytest.mark.integration

MODEL = "pixelmeans"

# Triton Python-backend model: score k is the mean of every 27th pixel byte from byte k, / 255.
MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            flat = images.reshape(images.shape[0], -1).astype(np.float32)
            scores = np.stack([flat[:, k::27].mean(axis=1) for k in range(27)], axis=1) / 255
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("scores", scores)]))
        return responses
"""


@pytest.fixture(scope="module")
def pixel_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    """A Triton of this module's own serving `pixelmeans`: noop's signature, scores from the pixels.
    Shared by its tests, which count only the images it scores while each runs."""
    tmp_path = tmp_path_factory.mktemp("pixel-triton")
    model = tmp_path / "models" / MODEL
    shutil.copytree(MODELS / "noop", model)
    config = model / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "noop"', f'name: "{MODEL}"'))
    (model / "1" / "model.py").write_text(MODEL_PY)
    triton = Triton(tmp_path / "triton-run", tmp_path / "models", ready_model=MODEL)
    triton.start()
    yield triton
    triton.stop()


def test_a_repost_s_prediction_is_made_without_a_triton_call(kafka: None, pixel_triton: Triton, tmp_path: Path) -> None:
    topics = fresh_topics("images", "predictions")
    original_pixels, other_pixels, burst_pixels = photo_pixels(3)
    as_jpeg = {"pixel_format": pixels.JPEG, "pixels": pixels.encode(original_pixels, 224, "jpeg")[1]}
    reposted = {"text": "a repost", "image_url": "https://pbs.example/rt.jpg"}
    # (records written together, images Triton must score for them), one step after another
    steps = [
        ([image_record("50001", original_pixels)], 1),
        ([image_record("50002", original_pixels) | reposted], 0),
        ([image_record("50003", other_pixels)], 1),  # Triton's counters do move when an image needs it
        # the same pixels in other wire bytes: a hit lost, never a wrong one
        ([image_record("50004", original_pixels) | as_jpeg], 1),
        ([image_record("50005", original_pixels) | as_jpeg | reposted], 0),  # the JPEG's repost
        # copies of a new image in flight together share one inference
        ([image_record(str(50_010 + n), burst_pixels) for n in range(4)], 1),
    ]
    port = free_port()
    env = classifier_env(topics, pixel_triton.grpc_url, MODEL, port) | {
        "CLASSIFIER_PREDICTION_CACHE_TTL_S": "600",
        "CLASSIFIER_PREDICTION_CACHE_MAX_ENTRIES": "1000",
    }
    triton_metrics = f"http://localhost:{pixel_triton.env['METRICS_PORT']}/metrics"
    classifier_metrics = f"http://127.0.0.1:{port}/metrics"
    model_images = f'model="{MODEL}"'
    written = 0
    with service("classifier", env, tmp_path / "classifier.log", port):
        for records, inferred in steps:
            scored_before = metric(triton_metrics, "nv_inference_count", model_images)
            requests_before = metric(triton_metrics, "nv_inference_request_success", model_images)
            produce(topics[0], records)
            written += len(records)
            predictions = consume(topics[1], written, timeout_s=60)
            assert len(predictions) == written, records[0]["tweet_id"]
            scored = metric(triton_metrics, "nv_inference_count", model_images) - scored_before
            requests = metric(triton_metrics, "nv_inference_request_success", model_images) - requests_before
            assert (scored, requests) == (inferred, inferred), records[0]["tweet_id"]
        lookups = {
            result: metric(classifier_metrics, "tagstream_classifier_cache_lookups_total", f'result="{result}"')
            for result in ("hit", "coalesced", "miss")
        }
        assert lookups["miss"] == 4
        assert lookups["hit"] + lookups["coalesced"] == 5  # two reposts, three copies of the burst
        assert metric(classifier_metrics, "tagstream_classifier_cache_entries") == 4

    by_id = {p["tweet_id"]: p for p in predictions}
    original, repost, other, jpeg, jpeg_repost = (by_id[records[0]["tweet_id"]] for records, _ in steps[:5])
    assert repost["scores"] == original["scores"]  # the original's, to the bit
    assert repost["hashtags"] == original["hashtags"]
    assert jpeg_repost["scores"] == jpeg["scores"]
    assert other["scores"] != original["scores"]  # the model tells the images apart
    # the repost's own origin and times, and no request to speak of
    assert (repost["text"], repost["image_url"], repost["media_key"]) == (
        "a repost",
        "https://pbs.example/rt.jpg",
        "3_50002",
    )
    assert repost["fetch_ts_ms"] == steps[1][0][0]["fetch_ts_ms"]
    assert repost["classify_ts_ms"] >= original["classify_ts_ms"]
    assert (repost["batch_size"], repost["inference_ms"]) == (0, 0.0)
    assert (jpeg_repost["batch_size"], jpeg_repost["inference_ms"]) == (0, 0.0)
    assert original["batch_size"] == 1
    assert original["inference_ms"] > 0
    assert (repost["model_name"], repost["model_version"]) == (original["model_name"], original["model_version"])
    burst = [by_id[str(50_010 + n)] for n in range(4)]
    assert all(copy["scores"] == burst[0]["scores"] for copy in burst)


def test_with_the_cache_off_every_copy_is_inferred(kafka: None, pixel_triton: Triton, tmp_path: Path) -> None:
    topics = fresh_topics("images", "predictions")
    image = photo_pixels(1)[0]
    port = free_port()
    env = classifier_env(topics, pixel_triton.grpc_url, MODEL, port) | {"CLASSIFIER_PREDICTION_CACHE_TTL_S": "0"}
    triton_metrics = f"http://localhost:{pixel_triton.env['METRICS_PORT']}/metrics"
    with service("classifier", env, tmp_path / "classifier.log", port):
        scored_before = metric(triton_metrics, "nv_inference_count", f'model="{MODEL}"')
        for n in range(3):  # one after another, so no two share a batch
            produce(topics[0], [image_record(str(60_000 + n), image)])
            predictions = consume(topics[1], n + 1, timeout_s=60)
        assert metric(triton_metrics, "nv_inference_count", f'model="{MODEL}"') == scored_before + 3
    assert {p["batch_size"] for p in predictions} == {1}
