"""sink's settings (`SINK_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import StreamSettings


class SinkSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="SINK_")

    metrics_port: int = 9104
    input_topic: str = "predictions"
    group_id: str = "sink"
    database_path: Path = Path("predictions.db")
    api_host: str = "0.0.0.0"  # noqa: S104 - pods listen on all interfaces
    api_port: int = 8080
