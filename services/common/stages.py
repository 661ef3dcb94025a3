"""The stage graph, declared once: what each stage reads and writes, its group and its ports.

Everything else that names a topic, a group or a port is generated from this or checked
against it by a test: the settings' defaults (services/*/settings.py), topic creation
(`python -m services.common.topics`), scripts/stack.sh, the local Prometheus, the Kubernetes
`KafkaTopic`s and ConfigMaps, and the README's topic table (tests/unit/test_stages.py,
tests/deploy/test_contracts.py).

A stage that consumes writes what it cannot process to `<input>.dlq` and what it sheds under
load to `<input>.shed`; ingest, which consumes no topic, writes its dead letters beside its
output, to `tweets.dlq`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DLQ_SUFFIX = ".dlq"
SHED_SUFFIX = ".shed"
DAY_MS = 24 * 3600 * 1000
_IMAGE_BYTES = {"max.message.bytes": str(2 * 1024 * 1024)}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 3
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    metrics_port: int
    #: the topic it consumes (None: it reads from outside Kafka)
    input: str | None
    #: the topic it produces (None: it writes outside Kafka)
    output: str | None
    api_port: int | None = None

    @property
    def group(self) -> str | None:
        """Its consumer group: one per stage, named after it."""
        return self.name if self.input else None

    @property
    def dead_letters(self) -> str:
        source = self.input or self.output
        assert source is not None
        return source + DLQ_SUFFIX

    @property
    def shed(self) -> str | None:
        return self.input + SHED_SUFFIX if self.input else None


STAGES: tuple[Stage, ...] = (
    Stage("ingest", 9101, input=None, output="tweets"),
    Stage("fetcher", 9102, input="tweets", output="images"),
    Stage("classifier", 9103, input="images", output="predictions"),
    Stage("sink", 9104, input="predictions", output=None, api_port=8080),
)
BY_NAME = {stage.name: stage for stage in STAGES}

#: retention and size of each data topic; its dead letters keep 14 days, its shed audit 3
_DATA_TOPICS: dict[str, tuple[int, dict[str, str]]] = {
    "tweets": (7 * DAY_MS, {}),
    "images": (DAY_MS, _IMAGE_BYTES),
    "predictions": (30 * DAY_MS, {}),
}


def stage(name: str) -> Stage:
    return BY_NAME[name]


def reader_of(topic: str) -> Stage | None:
    """The stage that consumes `topic`."""
    return next((s for s in STAGES if s.input == topic), None)


def downstream_group(name: str) -> str | None:
    """The group that reads what stage `name` writes: the next stage's."""
    output = BY_NAME[name].output
    reader = reader_of(output) if output else None
    return reader.group if reader else None


def topics() -> tuple[TopicSpec, ...]:
    """Every topic the pipeline uses: each data topic, its dead letters and its shed audit."""
    specs = []
    for name, (retention_ms, extra) in _DATA_TOPICS.items():
        specs.append(TopicSpec(name, 3, {"retention.ms": str(retention_ms), **extra}))
        specs.append(TopicSpec(name + DLQ_SUFFIX, 1, {"retention.ms": str(14 * DAY_MS), **extra}))
        if reader_of(name) is not None:
            specs.append(TopicSpec(name + SHED_SUFFIX, 1, {"retention.ms": str(3 * DAY_MS), **extra}))
    return tuple(specs)


PIPELINE_TOPICS = topics()


def main() -> None:
    """`python -m services.common.stages ports`: `name port` per line, for shell scripts."""
    for s in STAGES:
        print(s.name, s.metrics_port)


if __name__ == "__main__":
    main()
