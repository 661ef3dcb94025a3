"""Typed settings shared by every service; each service subclasses `StreamSettings` with its own prefix."""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .shedding import DEFAULT_LEVELS, ShedLevel
from .stages import DLQ_SUFFIX, SHED_SUFFIX


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (`KAFKA_*`)."""

    # A validation error never prints the values: they may hold the password.
    model_config = SettingsConfigDict(env_prefix="KAFKA_", hide_input_in_errors=True)

    bootstrap_servers: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: how long the client retries one record before reporting it failed (`message.timeout.ms`);
    #: the stage then writes it again, with backoff, until it is delivered or the process ends
    delivery_timeout_s: float = Field(default=30.0, gt=0)

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings common to producers, consumers and admin clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class ServiceSettings(BaseSettings):
    """What every service has: Kafka, its metrics/health port, log level."""

    # A validation error never prints the values: any of them may hold a secret (services'
    # settings inherit this; a nested `<SERVICE>_KAFKA` JSON may hold the Kafka password).
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    metrics_port: int = 9100
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")


class StreamSettings(ServiceSettings):
    """A consume → process → produce service."""

    input_topic: str
    group_id: str
    output_topic: str = ""
    #: exactly_once: read, process and write inside Kafka transactions (services/common/commits.py);
    #: at_least_once: write the outputs, then commit the offsets
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "at_least_once"
    #: how often offsets are committed; under exactly_once, how long a transaction stays open
    commit_interval_s: float = Field(default=0.1, gt=0)
    #: this replica's stable name (a StatefulSet pod's name in Kubernetes): its static group
    #: membership and, under exactly_once, its transactional id; unique among a stage's replicas
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1)
    #: static group membership (`group.instance.id`): a restarted replica takes its partitions
    #: back at once instead of waiting for its predecessor's session to expire
    static_membership: bool = True
    #: how long the group waits for a silent member before giving its partitions to others
    session_timeout_s: float = Field(default=45.0, ge=6, le=300)
    max_in_flight: int = Field(default=64, ge=1)
    consume_batch_size: int = Field(default=64, ge=1)
    #: dead letters go to `<input topic><dlq_suffix>`
    dlq_suffix: str = DLQ_SUFFIX
    #: drop the lowest priorities first when the consumer falls behind (services/common/shedding.py)
    shedding_enabled: bool = True
    #: JSON list of {"min_priority", "lag_records", "lag_seconds"}: the lag at which each level starts
    shed_levels: list[ShedLevel] = Field(default_factory=lambda: list(DEFAULT_LEVELS))
    #: a level is left once both lags stay under this share of its thresholds ...
    shed_exit_ratio: float = 0.5
    #: ... for this long
    shed_min_dwell_s: float = 5.0
    #: the consumer group that reads `output_topic`; its lag is added to this stage's own, so
    #: records the next stage would shed anyway are shed here, before any work (empty: own lag only)
    downstream_group: str = ""
    #: write each shed record, with why, to `<input topic><shed_suffix>`
    shed_audit: bool = True
    shed_suffix: str = SHED_SUFFIX

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    @property
    def transactional_id(self) -> str:
        """Stable per replica, so a restarted one fences its predecessor at once."""
        return f"tagstream-{self.group_id}-{self.instance_id}"

    @property
    def dlq_topic(self) -> str:
        return self.input_topic + self.dlq_suffix

    @property
    def shed_topic(self) -> str:
        return self.input_topic + self.shed_suffix
