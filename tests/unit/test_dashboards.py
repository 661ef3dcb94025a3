"""The Grafana dashboards in deploy/grafana/ and the local Prometheus config: structure, units,
datasource variable, PromQL that parses, and metric names the services really define.

The helpers at the top are shared with tests/integration/test_dashboards.py, which sends every
query to a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana interval variables, and what a one-off query uses in their place.
INTERVAL_VARIABLES = ("$__rate_interval", "$__interval", "$__range")
# Panels that can only show data on a GPU server say so in their description, and may use
# nothing but Triton's GPU metrics (so the marker cannot excuse any other empty panel).
NEEDS_GPU = "[needs GPU]"
GPU_METRIC_PREFIX = "nv_gpu_"
# The oldest schema of a Grafana still supported (10.x writes 38/39, 11.x 39-41).
MIN_SCHEMA_VERSION = 38
# Grafana unit ids (packages/grafana-data valueFormats) the dashboards may use: a typo would
# silently fall back to a bare number.
GRAFANA_UNITS = frozenset({"none", "short", "percentunit", "s", "bytes", "Bps", "recps", "reqps", "ops", "watt"})

# Keywords of PromQL that look like names (functions are told apart by their parenthesis).
_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels that query (rows only group them)."""
    return (panel for panel in panels(dashboard) if panel["type"] != "row")


def needs_gpu(panel: dict[str, Any]) -> bool:
    return NEEDS_GPU in panel.get("description", "")


def concrete(expr: str, interval: str = "1m") -> str:
    """The query Grafana would send, with its interval variables replaced by `interval`."""
    for variable in INTERVAL_VARIABLES:
        expr = expr.replace(variable, interval)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels or numbers)."""
    text = _STRING.sub('""', expr)
    text = _LABEL_LISTS.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _PROMQL_WORDS}


def all_queries() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard name, panel, target) for every query of every dashboard."""
    for name, dashboard in load_dashboards().items():
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                yield name, panel, target


def _defined_metric_names() -> set[str]:
    """Sample names the services' metric modules define, as they appear in /metrics."""
    import services.classifier.metrics
    import services.common.metrics
    import services.fetcher.metrics
    import services.ingest.metrics  # noqa: F401  (imported for their registrations)

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# ---------------------------------------------------------------- the helpers themselves


def test_metric_names_ignores_functions_keywords_labels_and_numbers() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, stage) "
        '(rate(tagstream_x_seconds_bucket{stage="sink"}[$__rate_interval])))'
        " / sum without (instance) (rate(other_total[1m])) / 1e6"
        ' or on (stage) label_replace(0 * max by (stage) (a:recorded), "priority", "none", "", "")'
    )
    assert metric_names(expr) == {"tagstream_x_seconds_bucket", "other_total", "a:recorded"}


def test_concrete_replaces_every_interval_variable() -> None:
    assert concrete("rate(x[$__rate_interval]) + rate(y[$__interval])", "2m") == "rate(x[2m]) + rate(y[2m])"


# ---------------------------------------------------------------- dashboards


def test_there_are_the_three_dashboards_with_unique_uids() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"overview", "triton", "kafka"}
    uids = [d["uid"] for d in dashboards.values()]
    assert all(isinstance(uid, str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) for uid in uids), uids
    assert len(set(uids)) == len(uids)
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", ["overview", "triton", "kafka"])
def test_dashboard_has_a_prometheus_datasource_variable_and_a_current_schema(name: str) -> None:
    dashboard = load_dashboards()[name]
    assert dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert dashboard["panels"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Every other variable would need a value in the integration test: there are none.
    assert set(variables) == {"datasource"}


@pytest.mark.parametrize("name", ["overview", "triton", "kafka"])
def test_every_panel_queries_through_the_variable_with_a_unit(name: str) -> None:
    dashboard = load_dashboards()[name]
    for panel in query_panels(dashboard):
        where = f"{name}: {panel.get('title')!r}"
        assert panel["title"], where
        assert panel.get("datasource") == DATASOURCE_REF, where
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in GRAFANA_UNITS, f"{where}: unit {unit!r}"
        assert panel["targets"], f"{where} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), where
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE_REF, where
            assert isinstance(target.get("expr"), str), where
            assert target["expr"].strip(), where
            assert "$" not in concrete(target["expr"]), f"{where}: a variable the tests cannot fill"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            assert "targets" not in panel, panel["title"]
            assert "datasource" not in panel, panel["title"]


def _datasource_values(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_values(item)


@pytest.mark.parametrize("name", ["overview", "triton", "kafka"])
def test_no_datasource_is_hard_coded(name: str) -> None:
    grafana_builtin = {"type": "grafana", "uid": "-- Grafana --"}  # the built-in annotations
    for value in _datasource_values(load_dashboards()[name]):
        assert value in (DATASOURCE_REF, grafana_builtin), value


@pytest.mark.parametrize("name", ["overview", "triton", "kafka"])
def test_panel_ids_are_unique_and_the_grid_has_no_overlap(name: str) -> None:
    dashboard = load_dashboards()[name]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert min(pos["w"], pos["h"]) > 0, panel["title"]
        assert 0 <= pos["x"] <= pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_gpu_marker_is_on_exactly_the_panels_that_read_gpu_metrics() -> None:
    marked = 0
    for name, dashboard in load_dashboards().items():
        for panel in query_panels(dashboard):
            used = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
            reads_gpu = any(m.startswith(GPU_METRIC_PREFIX) for m in used)
            assert needs_gpu(panel) == reads_gpu, f"{name}: {panel['title']!r}"
            if needs_gpu(panel):
                marked += 1
                assert all(m.startswith(GPU_METRIC_PREFIX) for m in used), f"{name}: {panel['title']!r}"
    assert marked > 0


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus, see scripts/system-deps.sh) is not installed")
    rules = [
        {"record": f"dashboard:{name}:{panel['id']}:{target['refId']}", "expr": concrete(target["expr"])}
        for name, panel, target in all_queries()
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_every_pipeline_metric_a_dashboard_names_is_defined_by_a_service() -> None:
    defined = _defined_metric_names()
    used = {m for _, _, target in all_queries() for m in metric_names(target["expr"]) if m.startswith("tagstream_")}
    assert used, "the dashboards read no pipeline metric"
    assert used <= defined, f"not defined by any service: {sorted(used - defined)}"


def test_the_issue_s_metrics_each_have_a_panel() -> None:
    used = {m for _, _, target in all_queries() for m in metric_names(target["expr"])}
    wanted = {
        "tagstream_records_consumed_total",
        "tagstream_records_produced_total",
        "tagstream_records_skipped_total",
        "tagstream_records_shed_total",
        "tagstream_dead_letters_total",
        "tagstream_processing_seconds_bucket",
        "tagstream_end_to_end_latency_seconds_bucket",
        "tagstream_consumer_lag_records",
        "tagstream_consumer_lag_seconds",
        "tagstream_fetch_results_total",
        "tagstream_fetch_bytes_total",
        "tagstream_fetch_seconds_bucket",
        "tagstream_decode_seconds_bucket",
        "tagstream_triton_request_seconds_bucket",
        "tagstream_triton_batch_size_bucket",
        "tagstream_triton_requests_in_flight",
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_queue_duration_us",
        "kafka_server_brokertopicmetrics_messagesin_total",
        "kafka_server_replicamanager_underreplicatedpartitions",
        "kafka_controller_kafkacontroller_activecontrollercount",
        "kafka_log_log_size",
    }
    assert wanted <= used, sorted(wanted - used)


# ---------------------------------------------------------------- Prometheus config


def test_prometheus_scrapes_every_part_of_the_local_stack_every_few_seconds() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    interval = config["global"]["scrape_interval"]
    assert re.fullmatch(r"\d+s", interval), interval
    assert int(interval[:-1]) <= 15
    targets = {
        job["job_name"]: [t for group in job.get("static_configs", []) for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["ingest"] == ["127.0.0.1:9101"]
    assert targets["fetcher"] == ["127.0.0.1:9102"]
    assert targets["classifier"] == ["127.0.0.1:9103"]
    assert targets["sink"] == ["127.0.0.1:9104"]
    assert targets["triton"] == ["127.0.0.1:8002"]
    assert targets["kafka"] == ["127.0.0.1:9404"]
    assert targets["prometheus"] == ["127.0.0.1:9090"]
    registered = next(job for job in config["scrape_configs"] if job["job_name"] == "registered")
    assert registered["file_sd_configs"] == [{"files": ["targets/*.json"]}]


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus, see scripts/system-deps.sh) is not installed")
    copy = tmp_path / "prometheus.yml"  # where scripts/prometheus.sh runs it: beside targets/
    shutil.copy(PROMETHEUS_CONFIG, copy)
    done = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
