"""ingest's settings (`INGEST_*`, and `X_*` for the X API)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.common.stages import stage

PUBLIC_X_API = "https://api.twitter.com"
STAGE = stage("ingest")


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_")

    metrics_port: int = STAGE.metrics_port
    output_topic: str = STAGE.output or ""
    dlq_topic: str = STAGE.dead_letters
    #: rule-tag class (the part before ':') or whole tag → priority; higher is more important.
    #: The rules file gives each of its rules a priority; when this is set in the environment,
    #: the tags and classes it names override the file.
    rule_priorities: dict[str, int] = Field(default_factory=lambda: {"targeted": 2, "sample": 1})
    #: priority of a post whose rules match nothing above
    default_priority: int = 0
    #: service mode without X credentials: replay this file once, then idle
    replay_file: Path | None = None
    replay_rate: float = 0.0

    # --- the X API -------------------------------------------------------------------------
    #: app-only bearer token; when set, `run` reads the live filtered stream. Never logged.
    x_bearer_token: SecretStr | None = Field(default=None, validation_alias="X_BEARER_TOKEN")
    #: scheme and host of the X API (any server speaking its protocol), without a trailing '/'
    x_api_base_url: str = Field(default=PUBLIC_X_API, validation_alias="X_API_BASE_URL")
    #: the stream rules as code; default: the file shipped with the package
    rules_file: Path | None = None
    #: make the stream's rules match the rules file when the live service starts
    sync_rules: bool = True
    #: timeout of one REST call (rules, recent search)
    request_timeout_s: float = Field(default=30.0, gt=0)

    # --- staying connected (X's documented schedule by default) ---------------------------
    #: no data and no keep-alive for this long (X sends one every 20 s): the connection is stalled
    stall_timeout_s: float = Field(default=30.0, gt=0)
    #: network errors and stalls: wait grows by this step per attempt, up to the max
    network_backoff_step_s: float = Field(default=0.25, ge=0)
    network_backoff_max_s: float = Field(default=16.0, ge=0)
    #: HTTP errors: first wait, doubled per attempt, up to the max
    http_backoff_start_s: float = Field(default=5.0, ge=0)
    http_backoff_max_s: float = Field(default=320.0, ge=0)
    #: 429 without a usable `x-rate-limit-reset`: first wait, doubled per attempt, up to the max
    rate_limit_backoff_start_s: float = Field(default=60.0, ge=0)
    rate_limit_backoff_max_s: float = Field(default=900.0, ge=0)
    #: ask X to redeliver up to this many minutes missed while disconnected (1-5; 0: off; not every access level)
    stream_backfill_minutes: int = Field(default=0, ge=0, le=5)
    #: how many recent tweet ids are remembered to drop posts delivered twice (after reconnects)
    dedup_window: int = Field(default=100_000, ge=1)
    #: /healthz reports not ready once the stream has been disconnected for longer than this
    max_disconnected_s: float = Field(default=120.0, gt=0)
    #: a stream line longer than this goes to the dead-letter topic (its first 64 KiB) as `line_too_long`
    max_line_bytes: int = Field(default=1 << 20, ge=1024)
    #: live posts whose delivery to Kafka is not confirmed yet, at most
    max_in_flight: int = Field(default=1000, ge=1)
    #: append every post payload read from X (live or backfill) to this file, in the replay format
    record_file: Path | None = None
    #: backfill: longest wait for a rate-limit window to reset before giving up
    backfill_max_wait_s: float = Field(default=900.0, ge=0)

    @property
    def live(self) -> bool:
        return self.x_bearer_token is not None and bool(self.x_bearer_token.get_secret_value())
