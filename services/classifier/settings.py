"""classifier's settings (`CLASSIFIER_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.cpus import available_cpus
from services.common.settings import StreamSettings
from services.common.stages import stage

STAGE = stage("classifier")


class ClassifierSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_")

    metrics_port: int = STAGE.metrics_port
    input_topic: str = STAGE.input or ""
    output_topic: str = STAGE.output or ""
    group_id: str = STAGE.group or ""
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    triton_url: str = "localhost:8001"
    model_name: str = "resnet50"
    #: empty: the newest version Triton serves
    model_version: str = ""
    max_batch_size: int = 16
    max_batch_wait_ms: float = 20.0
    #: records wait in the in-flight window (`max_in_flight`, 64) after the shedding decision:
    #: keep that near 2 x max_batch_size x max_requests_in_flight
    max_requests_in_flight: int = 2
    request_timeout_s: float = 30.0
    #: threads decoding JPEG-encoded pixels (raw pixels need none)
    decode_workers: int = Field(default_factory=available_cpus, ge=1)
    #: class → hashtag mapping with per-class thresholds; default: the file shipped with the package
    hashtags_file: Path | None = None
    #: how long an image's scores are reused for the same pixels and model; 0 turns the cache off
    prediction_cache_ttl_s: float = Field(default=3600.0, ge=0)
    #: images whose scores are kept, least recently used dropped first; 0 turns the cache off
    prediction_cache_max_entries: int = Field(default=100_000, ge=0)

    @property
    def prediction_cache_enabled(self) -> bool:
        return self.prediction_cache_ttl_s > 0 and self.prediction_cache_max_entries > 0
