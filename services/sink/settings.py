"""sink's settings (`SINK_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import StreamSettings
from services.common.stages import stage

from .credentials import split_password
from .group_commit import GroupPolicy
from .live import DEFAULT_WRITE_TIMEOUT_S

# Where the gallery may load images from: any https host (the X CDN and others), and the
# local demo's image server.
DEFAULT_IMAGE_SOURCES = "https: http://127.0.0.1:8765 http://localhost:8765"


STAGE = stage("sink")


class SinkSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="SINK_")

    metrics_port: int = STAGE.metrics_port
    input_topic: str = STAGE.input or ""
    group_id: str = STAGE.group or ""
    #: storing is cheap and its results are the product: the sink does not shed unless told to
    shedding_enabled: bool = False
    #: SQLite file, used when `database_url` is unset
    database_path: Path = Path("predictions.db")
    #: `postgresql://user:password@host:port/db`: use PostgreSQL instead of SQLite
    database_url: SecretStr | None = None
    database_pool_size: int = 4
    #: rows committed in one transaction at most (group commit: services/sink/group_commit.py)
    commit_max_batch: int = Field(default=64, ge=1)
    #: how long a row may wait for others to share its transaction when the store is idle
    commit_max_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    api_host: str = "0.0.0.0"  # noqa: S104 - pods listen on all interfaces
    api_port: int = 8080
    #: the Content-Security-Policy `img-src` sources of the gallery, space-separated
    gallery_image_sources: str = DEFAULT_IMAGE_SOURCES
    #: live-update (server-sent events) connections served at once
    max_event_streams: int = 100
    #: longest a write to one live stream may block (its client stopped reading) before the
    #: connection is dropped and its slot freed
    event_write_timeout_s: float = Field(default=DEFAULT_WRITE_TIMEOUT_S, gt=0)

    def grouping(self) -> GroupPolicy:
        return GroupPolicy(max_batch=self.commit_max_batch, max_wait_s=self.commit_max_wait_ms / 1000)

    @field_validator("gallery_image_sources")
    @classmethod
    def _one_csp_directive(cls, value: str) -> str:
        # The value goes into a response header: nothing that could end the directive or the header.
        if any(c in value for c in ";,\r\n") or not value.strip():
            raise ValueError("space-separated CSP sources without ';', ',' or line breaks")
        return " ".join(value.split())

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        split_password(value.get_secret_value())  # a URL libpq cannot read fails here, not on each connection
        return value
