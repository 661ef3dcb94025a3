"""The alert rules (deploy/k8s/base/monitoring/alerts.yaml): promtool accepts them and the
unit tests of alerts_test.yml pass on them, the local Prometheus loads exactly the
PrometheusRule's rules, the metrics, labels and jobs they name exist, and every alert has
its runbook section."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from .manifests import ROOT, Obj, of_kind, selector_matches, workloads

RULES = ROOT / "deploy" / "k8s" / "base" / "monitoring" / "alerts.yaml"
PROMTOOL_TESTS = Path(__file__).with_name("alerts_test.yml")
RUNBOOK = ROOT / "docs" / "runbook.md"
LOCAL_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SEVERITIES = {"critical", "warning"}
# Metrics of other programs the rules read: Triton's (the Triton dashboard's queries are
# checked against a real Triton in tests/integration/test_dashboards.py), and Strimzi's
# Kafka Exporter, which runs only in a cluster.
TRITON_DASHBOARD = ROOT / "deploy" / "grafana" / "triton.json"
CLUSTER_ONLY_METRICS = {"kafka_consumergroup_lag"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/system-deps.sh installs Debian's prometheus package"
    return path


def write_local_rules(out: Path) -> Path:
    """The rule file the local Prometheus loads, made the way scripts/prometheus.sh makes it."""
    subprocess.run(
        ["scripts/prometheus.sh", "rules", str(out)],
        cwd=ROOT,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PROMETHEUS_RULES": str(RULES)},
    )
    return out


def rule_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(RULES.read_text())["spec"]
    return spec


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_spec()["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def run_promtool_tests(rules: Path, work: Path, alert: str | None = None) -> subprocess.CompletedProcess[str]:
    """promtool's unit tests on `rules`: all of them, or those that check `alert`."""
    shutil.copy(rules, work / "tagstream.yml")
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())
    if alert is not None:
        tests["tests"] = [
            case for case in tests["tests"] if any(c["alertname"] == alert for c in case.get("alert_rule_test", []))
        ]
        assert tests["tests"], f"no unit test checks {alert}"
    (work / PROMTOOL_TESTS.name).write_text(yaml.safe_dump(tests, sort_keys=False))
    return subprocess.run(
        [promtool(), "test", "rules", PROMTOOL_TESTS.name], cwd=work, capture_output=True, text=True, check=False
    )


def test_local_rules_are_the_prometheus_rule_spec(tmp_path: Path) -> None:
    local = yaml.safe_load(write_local_rules(tmp_path / "tagstream.yml").read_text())
    assert local == rule_spec()
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    assert config["rule_files"] == ["rules/*.yml"], "scripts/prometheus.sh writes rules/tagstream.yml"


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = write_local_rules(tmp_path / "tagstream.yml")
    result = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    result = run_promtool_tests(write_local_rules(tmp_path / "real.yml"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("ConsumerLagGrowing", "tagstream:topic_lag_records:max > 1000", "tagstream:topic_lag_records:max > 5000"),
        (
            "ConsumerLagGrowing",
            "max by (topic) (tagstream_downstream_lag_records)",
            'max by (topic) (tagstream_downstream_lag_records{stage="none"})',
        ),
        ("HighPriorityLatencyBudgetFastBurn", 'priority="2",le="10.0"', 'priority="2",le="5.0"'),
        ("HighPriorityLatencyBudgetFastBurn", "(14.4 * 0.01)", "(20 * 0.01)"),
        ("HighPriorityLatencyBudgetFastBurn", "> (6 * 0.01)", "> (8 * 0.01)"),
        ("HighPriorityLatencyBudgetSlowBurn", "> (1 * 0.01)", "> (3 * 0.01)"),
        ("StageDown", 'or absent(up{job="sink"})', ""),
        ("SheddingSustained", "max_over_time(tagstream_shed_level[2m])", "tagstream_shed_level"),
        ("TritonUnreachable", '"StatusCode.(UNAVAILABLE|DEADLINE_EXCEEDED)"', '"StatusCode.(DEADLINE_EXCEEDED)"'),
        ("XStreamDisconnected", "sum by (instance) (tagstream_x_stream_disconnects_total) > 0", "vector(0) > 1"),
        (
            "DeadLetterRateHigh",
            "increase(tagstream_dead_letters_total[15m])) >= 10",
            "increase(tagstream_dead_letters_total[15m])) >= 0",
        ),
    ],
)
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    text = write_local_rules(tmp_path / "real.yml").read_text()
    assert old in text
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace(old, new))
    checked = subprocess.run([promtool(), "check", "rules", str(broken)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, f"the broken rule must still parse: {checked.stdout}{checked.stderr}"
    result = run_promtool_tests(broken, tmp_path, alert)
    assert result.returncode != 0, f"no promtool test of {alert} fails when {old!r} becomes {new!r}"


def test_every_alert_fires_in_some_unit_test() -> None:
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fired = {
        check["alertname"] for case in cases for check in case.get("alert_rule_test", []) if check.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alerts()}


def test_every_alert_says_how_bad_and_where_its_runbook_is() -> None:
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}", name


def _runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    current = None
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_every_alert_has_a_runbook_section_and_every_section_an_alert() -> None:
    sections = _runbook_sections()
    names = {rule["alert"] for rule in alerts()}
    alert_sections = {title for title in sections if re.fullmatch(r"[A-Z][A-Za-z]+", title)}
    assert alert_sections == names
    for name in names:
        text = sections[name]
        for part in ("**What it means.**", "**Where to look.**", "**What to do.**"):
            assert part in text, f"{name}: no {part}"


# --- the names the expressions use ---------------------------------------------------------


def _our_metrics() -> dict[str, set[str]]:
    """Every sample name our services export → its label names."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "services").glob("*/metrics.py")):
        module = importlib.import_module(f"services.{path.parent.name}.metrics")
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            name, labels = value._name, set(value._labelnames)
            if value._type == "counter":
                found[f"{name}_total"] = labels
            elif value._type == "histogram":
                for suffix in ("_bucket", "_count", "_sum"):
                    found[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
            else:
                found[name] = labels
    return found


SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*(\{([^}]*)\})?")
FUNCTIONS_AND_WORDS = {
    "sum", "max", "min", "rate", "increase", "deriv", "absent", "label_replace", "max_over_time",
    "and", "or", "on", "by", "group_left", "up",
}  # fmt: skip


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every selector of a PromQL expression."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values and label_replace arguments
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|on|group_left)\s*\([^)]*\)", "", expr)  # grouping label lists
    found = []
    for match in SELECTOR.finditer(expr):
        name, matchers = match.group(1), match.group(3) or ""
        if name in FUNCTIONS_AND_WORDS - {"up"} or ":" in name:
            continue
        labels = {re.split(r"[=!~]", m)[0].strip() for m in matchers.split(",") if m.strip()}
        found.append((name, labels))
    return found


def test_every_metric_and_label_the_rules_read_exists() -> None:
    ours = _our_metrics()
    triton = set(re.findall(r"\bnv_[a-z_]+", TRITON_DASHBOARD.read_text()))
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    used = set()
    for rule in all_rules():
        for name, labels in _selectors(rule["expr"]):
            used.add(name)
            if name.startswith("tagstream_"):
                assert name in ours, f"{rule.get('alert') or rule.get('record')}: no metric {name}"
                assert labels <= ours[name], f"{name} has no label {sorted(labels - ours[name])}"
            elif name.startswith("nv_"):
                assert name in triton, f"{name} is not among Triton's metrics the dashboard reads"
            else:
                assert name == "up" or name in CLUSTER_ONLY_METRICS, name
        for name in re.findall(r"tagstream:[a-z0-9_:]+", rule["expr"]):
            assert name in recorded, f"no recording rule makes {name}"
    assert len({n for n in used if n.startswith("tagstream_")}) >= 10


def test_the_expression_reader_sees_selectors() -> None:
    """The check above would pass on an expression it cannot read: it must find these."""
    assert _selectors('sum by (stage) (rate(tagstream_shed_total{priority="2",stage!~"a|b"}[5m])) > 0') == [
        ("tagstream_shed_total", {"priority", "stage"})
    ]
    assert ("up", {"job"}) in _selectors('absent(up{job="sink"})')


def test_jobs_the_rules_name_are_the_local_and_the_cluster_jobs(rendered: dict[str, list[Obj]]) -> None:
    named_jobs: set[str] = set()
    for rule in all_rules():
        for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', rule["expr"]):
            named_jobs |= set(value.split("|")) if op == "=~" else {value}
    assert named_jobs == {"ingest", "fetcher", "classifier", "sink", "triton"}
    local_jobs = {job["job_name"] for job in yaml.safe_load(LOCAL_CONFIG.read_text())["scrape_configs"]}
    assert named_jobs <= local_jobs
    for objects in rendered.values():
        monitors = of_kind(objects, "PodMonitor")
        for workload in workloads(objects):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            job_label = {m["spec"].get("jobLabel") for m in monitors if selector_matches(m["spec"]["selector"], labels)}
            assert job_label == {"app.kubernetes.io/name"}, workload["metadata"]["name"]
            assert labels["app.kubernetes.io/name"] in named_jobs
        (rule,) = of_kind(objects, "PrometheusRule")
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert rule["spec"] == rule_spec()
