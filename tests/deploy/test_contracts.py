"""What the manifests say agrees with what the services read: module names, environment
variable names and values (parsed by each service's own settings class), ports, topics,
consumer groups, the Kafka and Triton addresses, and where secrets come from."""

from __future__ import annotations

import importlib.util
import re
import typing
from pathlib import PurePosixPath

import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.classifier.settings import ClassifierSettings
from services.common.settings import ServiceSettings, StreamSettings
from services.common.stages import PIPELINE_TOPICS, stage
from services.ingest.settings import IngestSettings
from services.sink.settings import SinkSettings
from tests.stage_settings import settings_classes

from .manifests import (
    ROOT,
    Obj,
    container,
    container_env,
    named,
    of_kind,
    pod_spec,
    selector_matches,
    settings_env_names,
    workload_named,
    workloads,
)

SERVICES: dict[str, type[ServiceSettings]] = settings_classes()
TOPICS = {spec.name: spec for spec in PIPELINE_TOPICS}
NAMESPACE = "tagstream"


def _secret_env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """The variables of the settings fields typed as secrets."""
    secret_fields = {
        name for name, field in settings_cls.model_fields.items() if SecretStr in typing.get_args(field.annotation)
    } | {name for name, field in settings_cls.model_fields.items() if field.annotation is SecretStr}
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    names = set()
    for name in secret_fields:
        alias = settings_cls.model_fields[name].validation_alias
        names.add(alias.upper() if isinstance(alias, str) else (prefix + name).upper())
    kafka = settings_cls.model_fields.get("kafka")
    if kafka is not None and isinstance(kafka.annotation, type) and issubclass(kafka.annotation, BaseSettings):
        names |= _secret_env_names(kafka.annotation)
    return names


def _settings_from_manifest(
    objects: list[Obj], service: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[ServiceSettings, dict[str, str]]:
    """The service's settings object as the pod would build it from its environment."""
    settings_cls = SERVICES[service]
    for name in settings_env_names(settings_cls):
        monkeypatch.delenv(name, raising=False)
    env, _ = container_env(objects, workload_named(objects, service))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings_cls(), env


def _ports(workload: Obj, name: str | None = None) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(workload, name).get("ports", [])}


def _kafka_bootstrap(objects: list[Obj]) -> tuple[str, int]:
    """Strimzi's bootstrap Service `<cluster>-kafka-bootstrap` and the plain listener's port."""
    kafka = of_kind(objects, "Kafka")[0]
    plain = [
        listener
        for listener in kafka["spec"]["kafka"]["listeners"]
        if listener["type"] == "internal" and not listener["tls"]
    ]
    assert len(plain) == 1
    return f"{kafka['metadata']['name']}-kafka-bootstrap", int(plain[0]["port"])


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_runs_its_own_module_from_the_one_image(objects: list[Obj], service: str) -> None:
    workload = workload_named(objects, service)
    c = container(workload)
    assert c["args"] == [f"services.{service}"]
    assert importlib.util.find_spec(f"services.{service}.__main__") is not None
    images = {container(workload_named(objects, s))["image"] for s in SERVICES}
    assert len(images) == 1, images


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_variable_set_is_one_the_service_reads(objects: list[Obj], service: str) -> None:
    literal, referenced = container_env(objects, workload_named(objects, service))
    unknown = (set(literal) | referenced) - settings_env_names(SERVICES[service])
    assert not unknown, f"{service} reads no {sorted(unknown)}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_ports_and_probes_match_the_settings(objects: list[Obj], service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = _settings_from_manifest(objects, service, monkeypatch)
    workload = workload_named(objects, service)
    ports = _ports(workload)
    assert ports["metrics"] == settings.metrics_port
    c = container(workload)
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    svc = named(objects, "Service", service)
    assert selector_matches(
        {"matchLabels": svc["spec"]["selector"]}, workload["spec"]["template"]["metadata"]["labels"]
    )
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert by_name["metrics"]["port"] == ports["metrics"]
    assert by_name["metrics"]["targetPort"] == "metrics"
    if isinstance(settings, SinkSettings):
        assert ports["api"] == settings.api_port
        assert by_name["api"]["targetPort"] == "api"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_topics_and_kafka_address_match(objects: list[Obj], service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = _settings_from_manifest(objects, service, monkeypatch)
    host, port = _kafka_bootstrap(objects)
    assert settings.kafka.bootstrap_servers == f"{host}:{port}"
    if isinstance(settings, StreamSettings):
        used = {settings.input_topic, settings.dlq_topic} | ({settings.output_topic} - {""})
        if settings.shedding_enabled and settings.shed_audit:
            used.add(settings.shed_topic)
    else:
        assert isinstance(settings, IngestSettings)
        used = {settings.output_topic, settings.dlq_topic}
    # The cluster creates no topic on demand (auto.create.topics.enable=false): each must be a KafkaTopic.
    assert used <= set(TOPICS), f"{service} uses {sorted(used - set(TOPICS))}, not in PIPELINE_TOPICS"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_deployed_stages_read_and_write_what_the_stage_graph_says(
    objects: list[Obj], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = _settings_from_manifest(objects, service, monkeypatch)
    node = stage(service)
    assert settings.metrics_port == node.metrics_port
    if isinstance(settings, StreamSettings):
        deployed = (settings.input_topic, settings.output_topic or None, settings.group_id, settings.dlq_topic)
        assert deployed == (node.input, node.output, node.group, node.dead_letters)
    else:
        assert isinstance(settings, IngestSettings)
        assert (settings.output_topic, settings.dlq_topic) == (node.output, node.dead_letters)


def test_kafka_runs_in_kraft_mode_with_the_pipeline_topics(objects: list[Obj]) -> None:
    kafka = of_kind(objects, "Kafka")[0]
    kafka_name = kafka["metadata"]["name"]
    assert "zookeeper" not in kafka["spec"]
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    pools = of_kind(objects, "KafkaNodePool")
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka_name for p in pools)
    assert {"controller", "broker"} <= {role for p in pools for role in p["spec"]["roles"]}
    topics = {t["spec"]["topicName"]: t for t in of_kind(objects, "KafkaTopic")}
    assert set(topics) == set(TOPICS)
    for name, spec in TOPICS.items():
        topic = topics[name]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka_name
        assert topic["spec"]["partitions"] == spec.partitions, name
        assert {k: str(v) for k, v in topic["spec"]["config"].items()} == spec.config, name


def test_keda_scales_on_the_right_lag_and_never_past_the_partitions(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = _kafka_bootstrap(objects)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject")}
    assert set(scaled) == {"fetcher", "classifier"}
    for service, scaled_object in scaled.items():
        settings, _ = _settings_from_manifest(objects, service, monkeypatch)
        assert isinstance(settings, StreamSettings)
        spec = scaled_object["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == settings.input_topic
        assert meta["consumerGroup"] == settings.group_id
        # KEDA's operator resolves the address from its own namespace.
        assert meta["bootstrapServers"] == f"{host}.{NAMESPACE}.svc:{port}"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= TOPICS[settings.input_topic].partitions
        # The HorizontalPodAutoscaler owns the replica count; `kubectl apply` must not reset it.
        assert "replicas" not in workload_named(objects, service)["spec"]


def test_a_stage_watches_the_group_that_reads_its_output(objects: list[Obj], monkeypatch: pytest.MonkeyPatch) -> None:
    stages = {}
    for service in SERVICES:
        settings, _ = _settings_from_manifest(objects, service, monkeypatch)
        if isinstance(settings, StreamSettings):
            stages[service] = settings
    readers = {s.input_topic: s.group_id for s in stages.values()}
    watching = {name: s for name, s in stages.items() if s.downstream_group}
    assert "fetcher" in watching, "the fetcher sheds what the classifier would, before downloading it"
    for name, settings in watching.items():
        assert settings.downstream_group == readers.get(settings.output_topic), name


def test_classifier_reaches_the_model_triton_serves(objects: list[Obj], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = _settings_from_manifest(objects, "classifier", monkeypatch)
    assert isinstance(settings, ClassifierSettings)
    host, _, port = settings.triton_url.partition(":")
    svc = named(objects, "Service", host)
    grpc = next(p for p in svc["spec"]["ports"] if p["port"] == int(port))
    triton = named(objects, "Deployment", "triton")
    assert _ports(triton)[grpc["targetPort"]] == int(port)
    args = container(triton)["args"]
    assert f"--grpc-port={port}" in args
    assert f"--load-model={settings.model_name}" in args


def test_sink_database_lives_on_its_volume(objects: list[Obj], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = _settings_from_manifest(objects, "sink", monkeypatch)
    assert isinstance(settings, SinkSettings)
    workload = workload_named(objects, "sink")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(workload)["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in container(workload)["volumeMounts"]}
    db_dir = str(PurePosixPath(settings.database_path).parent)
    assert mounts.get(db_dir) in claims, f"{settings.database_path} is not on a persistent volume"
    named(objects, "PersistentVolumeClaim", claims[mounts[db_dir]])
    # SQLite allows one writer: one replica, never two at once during a rollout.
    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"]["type"] == "Recreate"


def test_secrets_come_from_secrets_only(objects: list[Obj]) -> None:
    secret_names = set().union(*(_secret_env_names(cls) for cls in SERVICES.values()))
    assert {"X_BEARER_TOKEN", "KAFKA_SASL_PASSWORD"} <= secret_names
    for config_map in of_kind(objects, "ConfigMap"):
        leaked = secret_names & set(config_map.get("data", {}))
        assert not leaked, f"ConfigMap {config_map['metadata']['name']} holds {leaked}"
    assert not of_kind(objects, "Secret"), "secrets are created by the user, never shipped"
    for service in SERVICES:
        for var in container(workload_named(objects, service)).get("env", []):
            if var["name"] in secret_names:
                assert "value" not in var, var
                assert "secretKeyRef" in var["valueFrom"], var
    token = next(v for v in container(workload_named(objects, "ingest"))["env"] if v["name"] == "X_BEARER_TOKEN")
    ref = token["valueFrom"]["secretKeyRef"]
    example = (ROOT / "deploy" / "k8s" / "examples" / "x-api-secret.yaml").read_text()
    assert f"name: {ref['name']}" in example
    assert f"{ref['key']}:" in example
    for service in ("fetcher", "classifier", "sink", "triton"):
        names = {v["name"] for v in container(workload_named(objects, service)).get("env", [])}
        assert "X_BEARER_TOKEN" not in names, service


def test_every_pod_is_scraped(objects: list[Obj]) -> None:
    monitors = of_kind(objects, "PodMonitor")
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = _ports(workload)
        scraping = [
            endpoint
            for m in monitors
            if selector_matches(m["spec"]["selector"], labels)
            for endpoint in m["spec"]["podMetricsEndpoints"]
            if endpoint["port"] in ports
        ]
        assert scraping, f"no PodMonitor scrapes {workload['metadata']['name']}"
        assert all(e["path"] == "/metrics" for e in scraping)


def test_every_deployment_has_a_disruption_budget(objects: list[Obj]) -> None:
    budgets = of_kind(objects, "PodDisruptionBudget")
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(selector_matches(b["spec"]["selector"], labels) for b in budgets), workload["metadata"]["name"]


def test_dashboards_are_labelled_for_grafana(objects: list[Obj]) -> None:
    dashboards = {
        c["metadata"]["name"]: c
        for c in of_kind(objects, "ConfigMap")
        if c["metadata"]["name"].startswith("tagstream-dashboard-")
    }
    files = {p.name for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    shipped = {key for c in dashboards.values() for key in c["data"]}
    assert shipped == files
    assert len(files) >= 3
    for config_map in dashboards.values():
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_gpu_overlay_runs_triton_on_a_gpu_with_a_persistent_engine_cache(rendered: dict[str, list[Obj]]) -> None:
    triton = named(rendered["gpu"], "Deployment", "triton")
    c = container(triton)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec(triton)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    config = (ROOT / "model_repository" / "gpu" / "resnet50" / "config.pbtxt").read_text()
    cache_paths = set(re.findall(r'key: "trt_engine_cache_path" value: "([^"]+)"', config))
    assert len(cache_paths) == 1, "the GPU model must name one TensorRT engine cache path"
    cache = PurePosixPath(cache_paths.pop())
    mount = next(
        m
        for m in c["volumeMounts"]
        if cache == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in cache.parents
    )
    assert not mount.get("readOnly", False)
    volume = next(v for v in pod_spec(triton)["volumes"] if v["name"] == mount["name"])
    named(rendered["gpu"], "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_cpu_overlay_runs_triton_without_a_gpu(rendered: dict[str, list[Obj]]) -> None:
    triton = named(rendered["cpu"], "Deployment", "triton")
    c = container(triton)
    for kind in ("requests", "limits"):
        assert "nvidia.com/gpu" not in c["resources"][kind]
    assert "nodeSelector" not in pod_spec(triton)
    models = next(m for m in c["volumeMounts"] if m["name"] == "models")
    python_path = next(v["value"] for v in c["env"] if v["name"] == "PYTHONPATH")
    assert PurePosixPath(models["mountPath"]) in PurePosixPath(python_path).parents


@pytest.mark.parametrize("overlay_name", ["gpu", "cpu"])
def test_triton_serves_the_repository_from_the_model_volume(rendered: dict[str, list[Obj]], overlay_name: str) -> None:
    triton = named(rendered[overlay_name], "Deployment", "triton")
    c = container(triton)
    repository = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--model-repository="))
    models = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert PurePosixPath(models["mountPath"]) in PurePosixPath(repository).parents
    assert models["readOnly"] is True
    assert (ROOT / "model_repository" / overlay_name / "resnet50" / "config.pbtxt").is_file()


def test_kafka_exports_the_metrics_the_kafka_dashboard_reads(objects: list[Obj]) -> None:
    """Strimzi's brokers run the local broker's JMX exporter rules, so one dashboard fits both."""
    kafka = of_kind(objects, "Kafka")[0]
    ref = kafka["spec"]["kafka"]["metricsConfig"]["valueFrom"]["configMapKeyRef"]
    rules = yaml.safe_load(named(objects, "ConfigMap", ref["name"])["data"][ref["key"]])
    local = yaml.safe_load((ROOT / "deploy" / "local" / "kafka" / "jmx-exporter.yaml").read_text())
    assert rules == local
