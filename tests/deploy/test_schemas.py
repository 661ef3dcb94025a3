"""Both overlays render, and every object they produce is valid: built-in kinds against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), the
custom resources against the CRDs of Strimzi, KEDA and the Prometheus Operator."""

from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .manifests import ROOT, Obj, load_crds, named, of_kind, strict_schema, workloads

# The oldest Kubernetes release we claim to support, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
CUSTOM_GROUPS = ("kafka.strimzi.io", "keda.sh", "monitoring.coreos.com")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

EXPECTED_KINDS = {
    "Namespace": 1,
    "ServiceAccount": 1,
    "Deployment": 3,  # ingest, sink, triton
    "StatefulSet": 2,  # fetcher, classifier: a stable pod name is a stable transactional id
    "Service": 5,
    "PodDisruptionBudget": 5,
    "NetworkPolicy": 5,
    "Kafka": 1,
    "KafkaNodePool": 1,
    "ScaledObject": 2,
    "PodMonitor": 3,
    "PrometheusRule": 1,
}


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str, str], Obj]:
    return load_crds()


def _is_custom(obj: Obj) -> bool:
    return str(obj["apiVersion"]).split("/")[0] in CUSTOM_GROUPS


def _validate_custom(obj: Obj, crd_schemas: dict[tuple[str, str, str], Obj]) -> None:
    group, version = obj["apiVersion"].split("/")
    schema = crd_schemas.get((group, version, obj["kind"]))
    assert schema is not None, f"no CRD schema for {obj['apiVersion']} {obj['kind']}"
    jsonschema.Draft7Validator(strict_schema(schema)).validate(obj)
    assert DNS_SUBDOMAIN.match(obj["metadata"]["name"]), obj["metadata"]["name"]


def test_overlay_renders_the_whole_system(objects: list[Obj]) -> None:
    kinds = Counter(o["kind"] for o in objects)
    for kind, count in EXPECTED_KINDS.items():
        assert kinds[kind] == count, f"{kind}: {kinds[kind]} rendered, {count} expected"
    names = {o["metadata"]["name"] for o in workloads(objects)}
    assert names == {"ingest", "fetcher", "classifier", "sink", "triton"}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "tagstream", f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schemas(objects: list[Obj], k8s_version: str) -> None:
    checked = 0
    for obj in objects:
        if _is_custom(obj):
            continue
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {k8s_version}): {exc.message}")
        checked += 1
    assert checked >= 30


def test_custom_resources_match_their_crds(objects: list[Obj], crd_schemas: dict[tuple[str, str, str], Obj]) -> None:
    custom = [o for o in objects if _is_custom(o)]
    assert {o["kind"] for o in custom} == {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "ScaledObject",
        "PodMonitor",
        "PrometheusRule",
    }
    for obj in custom:
        try:
            _validate_custom(obj, crd_schemas)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")


# The validators must be able to say no: each mistake below is one a person could make.


def _broken(objects: list[Obj], kind: str, name: str, change: Any) -> Obj:
    obj = copy.deepcopy(named(objects, kind, name))
    change(obj)
    return obj


def test_kubernetes_validation_rejects_mistakes(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["gpu"]
    version = KUBERNETES_VERSIONS[-1]
    mistakes = [
        # a misspelt field
        _broken(objects, "StatefulSet", "fetcher", lambda o: o["spec"]["template"]["spec"].update(nodeSelecter={})),
        # a port that is not a number or a name
        _broken(objects, "Service", "sink", lambda o: o["spec"]["ports"][0].update(port="eighty")),
        # a field in the wrong place
        _broken(objects, "NetworkPolicy", "fetcher", lambda o: o["spec"].update(egressRules=[])),
    ]
    for obj in mistakes:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(obj, version, strict=True)


def test_crd_validation_rejects_mistakes(
    rendered: dict[str, list[Obj]], crd_schemas: dict[tuple[str, str, str], Obj]
) -> None:
    objects = rendered["gpu"]
    mistakes = [
        _broken(objects, "KafkaTopic", "tweets", lambda o: o["spec"].update(partitions="three")),
        _broken(objects, "KafkaTopic", "images", lambda o: o["spec"].update(retention="1d")),
        _broken(objects, "Kafka", "tagstream", lambda o: o["spec"]["kafka"]["listeners"][0].pop("tls")),
        _broken(objects, "KafkaNodePool", "dual-role", lambda o: o["spec"].update(roles=["zookeeper"])),
        _broken(objects, "ScaledObject", "fetcher", lambda o: o["spec"].update(maxReplicas=3)),
        _broken(objects, "ScaledObject", "classifier", lambda o: o["spec"].update(minReplicaCount="one")),
        _broken(objects, "PodMonitor", "triton", lambda o: o["spec"].update(podMetricEndpoints=[])),
        _broken(objects, "PrometheusRule", "tagstream", lambda o: o["spec"]["groups"][0].update(rule=[])),
        _broken(objects, "PrometheusRule", "tagstream", lambda o: o["spec"]["groups"][1]["rules"][0].pop("expr")),
    ]
    for obj in mistakes:
        with pytest.raises(jsonschema.ValidationError):
            _validate_custom(obj, crd_schemas)


def test_examples_are_valid_and_not_applied(rendered: dict[str, list[Obj]]) -> None:
    """The manifests under deploy/k8s/examples are for the user to apply by hand."""
    examples = sorted((ROOT / "deploy" / "k8s" / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    applied = {(o["kind"], o["metadata"]["name"]) for objects in rendered.values() for o in objects}
    for path in examples:
        for obj in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
            assert (obj["kind"], obj["metadata"]["name"]) not in applied, path.name
            assert obj["metadata"]["namespace"] == "tagstream", path.name
            if obj["kind"] == "Pod":
                claims = {v["persistentVolumeClaim"]["claimName"] for v in obj["spec"]["volumes"]}
                assert claims <= {o["metadata"]["name"] for o in of_kind(rendered["cpu"], "PersistentVolumeClaim")}
