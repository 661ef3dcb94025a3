"""ingest's settings (`INGEST_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_")

    metrics_port: int = 9101
    output_topic: str = "tweets"
    dlq_topic: str = "tweets.dlq"
    #: rule-tag class (the part before ':') or whole tag → priority; higher is more important
    rule_priorities: dict[str, int] = Field(default_factory=lambda: {"targeted": 2, "sample": 1})
    #: priority of a post whose rules match nothing above
    default_priority: int = 0
    #: service mode without X credentials: replay this file once, then idle
    replay_file: Path | None = None
    replay_rate: float = 0.0
