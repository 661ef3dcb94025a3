"""Triton Python-backend model: ResNet50 ONNX run with onnxruntime on CPU.

All requests of one execute() call (as gathered by Triton's dynamic batcher) are
concatenated into a single onnxruntime run and the scores split back per request.
A malformed request gets an error response of its own; the others still run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "image"
OUTPUT_NAME = "scores"
IMAGE_SHAPE = (224, 224, 3)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: the CPU is shared with the rest of the stack.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        pb_utils.Logger.log_info(
            f"resnet50: loaded {path} with onnxruntime {ort.__version__}, "
            f"{options.intra_op_num_threads} intra-op threads"
        )

    def _images(self, request: Any) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            raise ValueError(f"missing input '{INPUT_NAME}'")
        images = tensor.as_numpy()
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(
                f"input '{INPUT_NAME}' must be uint8 [N,224,224,3], got {images.dtype} {list(images.shape)}"
            )
        return images

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batches: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            try:
                batches.append((i, self._images(request)))
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))

        if batches:
            try:
                images = np.concatenate([images for _, images in batches])
                (scores,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
                scores = scores.astype(np.float32, copy=False)
                start = 0
                for i, part in batches:
                    chunk = np.ascontiguousarray(scores[start : start + len(part)])
                    start += len(part)
                    out = pb_utils.Tensor(OUTPUT_NAME, chunk)
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
            except Exception as exc:  # noqa: BLE001 - fail the batch, not the model
                error = pb_utils.TritonError(f"inference failed: {exc}")
                for i, _ in batches:
                    responses[i] = pb_utils.InferenceResponse(error=error)
        return responses

    def finalize(self) -> None:
        self.session = None
