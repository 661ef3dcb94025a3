"""fetcher's settings (`FETCHER_*`); every limit has a safe default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.cpus import available_cpus
from services.common.settings import StreamSettings
from services.common.stages import downstream_group, stage

STAGE = stage("fetcher")


class FetcherSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="FETCHER_")

    metrics_port: int = STAGE.metrics_port
    input_topic: str = STAGE.input or ""
    output_topic: str = STAGE.output or ""
    group_id: str = STAGE.group or ""
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    downstream_group: str = downstream_group(STAGE.name) or ""
    max_in_flight: int = Field(default=128, ge=1)
    #: lift the refusal of loopback, private and link-local targets; for the local stack only
    allow_private_networks: bool = False
    #: requests at once, in all and to one host (the wait for a slot is not part of the timeouts)
    max_connections: int = Field(default=256, ge=1)
    max_connections_per_host: int = Field(default=32, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: longest silence while reading an answer
    read_timeout_s: float = Field(default=10.0, gt=0)
    #: one URL, from the first connection to the last byte of the body, across its redirects,
    #: retries and their backoff (waits for a connection slot are not counted)
    total_timeout_s: float = Field(default=20.0, gt=0)
    #: further tries after a timeout or a 5xx answer, and the backoff between them (full jitter)
    max_retries: int = Field(default=2, ge=0)
    retry_backoff_s: float = Field(default=0.25, ge=0)
    retry_backoff_max_s: float = Field(default=4.0, ge=0)
    max_redirects: int = Field(default=3, ge=0)
    max_bytes: int = Field(default=15 * 1024 * 1024, ge=1)
    #: bodies held in memory at once, all downloads together, from first byte until decoded
    max_buffered_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: seconds a DNS answer is reused; 0 resolves every time
    dns_cache_ttl_s: int = Field(default=60, ge=0)
    #: how long a decoded image stays reusable for the same URL, and the cache's memory bound
    cache_ttl_s: float = Field(default=600.0, ge=0)
    cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: how long a final refusal (404, blocked, not an image, ...) is remembered for a URL
    refusal_cache_ttl_s: float = Field(default=60.0, ge=0)
    #: refuse images with more pixels than this before decoding them (decompression bombs)
    max_pixels: int = Field(default=50_000_000, ge=1)
    #: refuse an image whose decode would take more memory than this (estimated from its header)
    max_image_memory_bytes: int = Field(default=160 * 1024 * 1024, ge=1)
    #: memory of all decodes under way together, estimated the same way: a decode waits for room
    max_decode_memory_bytes: int = Field(default=192 * 1024 * 1024, ge=1)
    #: side of the square model input
    image_size: int = Field(default=224, ge=1)
    #: pixels in `images`: a quality-90 JPEG (about 1/20 of the bytes; bench/README.md) or raw RGB
    image_encoding: Literal["jpeg", "raw"] = "jpeg"
    decode_workers: int = Field(default_factory=available_cpus, ge=1)
    user_agent: str = "tagstream-fetcher/0.1"
    #: hosts serving X's named renditions (services/fetcher/renditions.py): their photos are asked
    #: for at the smallest size that covers `image_size`; empty fetches every URL as given
    rendition_hosts: list[str] = Field(default_factory=lambda: ["pbs.twimg.com"])
    #: also ask for X's undocumented 360x360 and 900x900 renditions
    undocumented_renditions: bool = False

    @model_validator(mode="after")
    def _budget_fits_one_body(self) -> FetcherSettings:
        if self.max_buffered_bytes < self.max_bytes:
            raise ValueError("max_buffered_bytes must be at least max_bytes, or a large image could never be read")
        if self.max_decode_memory_bytes < self.max_image_memory_bytes:
            raise ValueError(
                "max_decode_memory_bytes must be at least max_image_memory_bytes, or an image under the cap "
                "could never be decoded"
            )
        return self
