"""Triton Python-backend model that does nothing: uniform scores, whatever the image.

Each request still has its input read (as the real model would), so the figure it gives
is the cost of getting pixels to the server and scores back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.classes = 27

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            scores = np.full((images.shape[0], self.classes), 1.0 / self.classes, dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("scores", scores)]))
        return responses
