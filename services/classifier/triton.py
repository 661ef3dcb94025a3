"""The model behind Triton's gRPC API: readiness, metadata read at start, batched inference."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from services.common.errors import RecordError, RetryableError

from . import metrics

log = logging.getLogger(__name__)

# Only a request the server found malformed is the record's fault; anything else
# (server gone, model loading, overload, deadline) is worth waiting out.
PERMANENT_STATUSES = {"StatusCode.INVALID_ARGUMENT"}


@dataclass(frozen=True)
class ModelSignature:
    name: str
    version: str
    input_name: str
    input_datatype: str
    input_shape: tuple[int, ...]  # without the batch dimension
    output_name: str
    labels: tuple[str, ...]  # in output order, as the model's label file gives them
    #: whether the weights make meaningful predictions, as the model's config declares it
    #: (`weights_meaningful`, written by tools/model/export.py); None when it does not say
    weights_meaningful: bool | None = None

    @property
    def classes(self) -> int:
        return len(self.labels)


def declared_meaningful(config: dict[str, Any]) -> bool | None:
    """The `weights_meaningful` parameter of a model's config ("true" or "false"); None for a
    model that does not declare it, or declares something else."""
    parameter = config.get("config", {}).get("parameters", {}).get("weights_meaningful", {})
    return {"true": True, "false": False}.get(str(parameter.get("string_value", "")).strip().lower())


class TritonModel:
    def __init__(self, url: str, model_name: str, model_version: str = "", timeout_s: float = 30.0) -> None:
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        self.signature: ModelSignature | None = None

    async def wait_until_ready(self, stop: asyncio.Event, poll_s: float = 2.0) -> ModelSignature | None:
        """Block until the model is ready, then read its signature; None if stopped first."""
        while not stop.is_set():
            try:
                if await self.client.is_model_ready(self.model_name, self.model_version, client_timeout=5):
                    self.signature = await self._read_signature()
                    log.info(
                        "model ready",
                        extra={
                            "fields": {"url": self.url, **self.signature.__dict__, "labels": len(self.signature.labels)}
                        },
                    )
                    return self.signature
            except InferenceServerException as exc:
                log.info("waiting for Triton", extra={"fields": {"url": self.url, "error": exc.message()}})
            await asyncio.sleep(poll_s)
        return None

    async def _read_signature(self) -> ModelSignature:
        meta = await self.client.get_model_metadata(self.model_name, self.model_version, as_json=True)
        if len(meta["inputs"]) != 1 or len(meta["outputs"]) != 1:
            raise RuntimeError(f"{self.model_name} must have one input and one output, has {meta}")
        model_input, model_output = meta["inputs"][0], meta["outputs"][0]
        input_shape = tuple(int(d) for d in model_input["shape"])[1:]  # the first is the batch (-1)
        classes = int(model_output["shape"][-1])
        return ModelSignature(
            name=meta["name"],
            version=max(meta["versions"], key=int) if not self.model_version else self.model_version,
            input_name=model_input["name"],
            input_datatype=model_input["datatype"],
            input_shape=input_shape,
            output_name=model_output["name"],
            labels=await self._read_labels(model_input, input_shape, model_output["name"], classes),
            weights_meaningful=declared_meaningful(
                await self.client.get_model_config(self.model_name, self.model_version, as_json=True)
            ),
        )

    async def _read_labels(
        self, model_input: dict[str, Any], input_shape: tuple[int, ...], output_name: str, classes: int
    ) -> tuple[str, ...]:
        """The model's labels, through Triton's classification extension on one blank input.

        Asking for the top `classes` classes returns every index with its label
        ("score:index:label"), so the labels come from the model, not from a copy of them.
        """
        blank = np.zeros((1, *input_shape), dtype=triton_to_np_dtype(model_input["datatype"]))
        inputs = [grpcclient.InferInput(model_input["name"], list(blank.shape), model_input["datatype"])]
        inputs[0].set_data_from_numpy(blank)
        outputs = [grpcclient.InferRequestedOutput(output_name, class_count=classes)]
        result = await self.client.infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs)
        entries = result.as_numpy(output_name)
        labels: dict[int, str] = {}
        for entry in entries.reshape(-1):
            parts = entry.decode().split(":", 2)
            if len(parts) != 3:
                raise RuntimeError(f"model {self.model_name} has no label file (got {entry!r})")
            labels[int(parts[1])] = parts[2]
        if sorted(labels) != list(range(classes)):
            raise RuntimeError(f"model {self.model_name} labels {len(labels)} of its {classes} outputs")
        return tuple(labels[i] for i in range(classes))

    async def infer(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Scores for a batch of images, one row each."""
        assert self.signature is not None, "wait_until_ready first"
        sig = self.signature
        batch = np.stack(images)
        inputs = [grpcclient.InferInput(sig.input_name, list(batch.shape), sig.input_datatype)]
        inputs[0].set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(sig.output_name)]
        metrics.BATCH_SIZE.observe(len(images))
        metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            with metrics.REQUEST_SECONDS.time():
                result = await self.client.infer(
                    sig.name, inputs, model_version=self.model_version, outputs=outputs, client_timeout=self.timeout_s
                )
        except InferenceServerException as exc:
            metrics.REQUEST_ERRORS.labels(str(exc.status())).inc()
            if str(exc.status()) in PERMANENT_STATUSES:
                raise RecordError("inference_rejected", exc.message() or str(exc)) from exc
            raise RetryableError(f"Triton at {self.url}: {exc.status()} {exc.message()}") from exc
        finally:
            metrics.REQUESTS_IN_FLIGHT.dec()
        scores = result.as_numpy(sig.output_name)
        if scores is None or scores.shape != (len(images), sig.classes):
            raise RuntimeError(f"unexpected output shape {None if scores is None else scores.shape}")
        return np.asarray(scores, dtype=np.float32)

    async def close(self) -> None:
        await self.client.close()
