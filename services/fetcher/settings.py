"""fetcher's settings (`FETCHER_*`); every limit has a safe default."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import StreamSettings


class FetcherSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="FETCHER_")

    metrics_port: int = 9102
    input_topic: str = "tweets"
    output_topic: str = "images"
    group_id: str = "fetcher"
    max_in_flight: int = 128
    #: lift the refusal of loopback, private and link-local targets; for the local stack only
    allow_private_networks: bool = False
    max_connections: int = 256
    max_connections_per_host: int = 32
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 20.0
    max_redirects: int = 3
    max_bytes: int = 15 * 1024 * 1024
    #: refuse images with more pixels than this before decoding them (decompression bombs)
    max_pixels: int = 50_000_000
    #: side of the square model input
    image_size: int = 224
    decode_workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    user_agent: str = "tagstream-fetcher/0.1"
