"""What names a topic, a group or a port agrees with the stage graph (services/common/stages.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.settings import StreamSettings
from services.common.stages import PIPELINE_TOPICS, STAGES, downstream_group, reader_of, stage
from services.ingest.settings import IngestSettings
from tests.stage_settings import settings_classes

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings_classes()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(("INGEST_", "FETCHER_", "CLASSIFIER_", "SINK_")):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_default_to_the_graph(name: str) -> None:
    settings = SETTINGS[name]()
    node = stage(name)
    assert settings.metrics_port == node.metrics_port
    if isinstance(settings, StreamSettings):
        assert (settings.input_topic, settings.output_topic or None, settings.group_id) == (
            node.input,
            node.output,
            node.group,
        )
        assert settings.dlq_topic == node.dead_letters
        assert settings.shed_topic == node.shed
        if settings.downstream_group:  # only the fetcher watches its next stage by default
            assert settings.downstream_group == downstream_group(name)
    else:
        assert isinstance(settings, IngestSettings)
        assert (settings.output_topic, settings.dlq_topic) == (node.output, node.dead_letters)


def test_the_graph_is_a_chain_and_every_topic_it_uses_is_created() -> None:
    created = {spec.name for spec in PIPELINE_TOPICS}
    for node in STAGES:
        used = {node.input, node.output, node.dead_letters, node.shed} - {None}
        assert used <= created, node.name
        if node.output is not None and node.output in {s.input for s in STAGES}:
            reader = reader_of(node.output)
            assert reader is not None
            assert downstream_group(node.name) == reader.group
    assert len({s.metrics_port for s in STAGES}) == len(STAGES)


def test_stack_script_takes_its_ports_from_the_graph() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "services.common.stages"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    assert [line.split() for line in printed if line] == [[s.name, str(s.metrics_port)] for s in STAGES]
    script = (ROOT / "scripts" / "stack.sh").read_text()
    assert "services.common.stages" in script
    assert not re.search(r"\b91\d\d\b", script), "a stage port written into the script"


def test_local_prometheus_scrapes_every_stage_on_its_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for node in STAGES:
        targets = [t for sc in jobs[node.name]["static_configs"] for t in sc["targets"]]
        assert targets == [f"127.0.0.1:{node.metrics_port}"], node.name


def test_readme_topic_table_matches_the_graph() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Records and topics", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for topic in re.findall(r"`([a-z.]+)`", cells[0]):
            table[topic] = {w.strip() for w in re.split(r",| and ", cells[3])}
    assert set(table) == {spec.name for spec in PIPELINE_TOPICS}
    for node in STAGES:
        if node.output in table:
            assert table[node.output] == {node.name}, node.output
        assert node.name in table[node.dead_letters], node.dead_letters
        if node.shed is not None:
            assert node.name in table[node.shed], node.shed
