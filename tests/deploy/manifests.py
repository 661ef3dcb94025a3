"""Rendering deploy/k8s and reading what the rendered objects say, for the deployment tests.

The tools come from scripts/k8s-tools.sh (kustomize, checkov, hadolint, the CRDs of Strimzi,
KEDA and the Prometheus Operator) and are used offline.
"""

from __future__ import annotations

import copy
import ipaddress
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
KUSTOMIZE = CACHE / "bin" / "kustomize"
TOOLS_VENV = CACHE / "k8s-tools" / "venv"
CHECKOV = TOOLS_VENV / "bin" / "checkov"
HADOLINT = TOOLS_VENV / "bin" / "hadolint"
CRD_DIR = CACHE / "k8s-schemas"
OVERLAYS = ("gpu", "cpu")

Obj = dict[str, Any]
# libyaml's loader when PyYAML has it: the Strimzi CRDs alone are a third of a megabyte.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def require_tool(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/k8s-tools.sh (make k8s-tools)")
    return path


def render(overlay: str) -> list[Obj]:
    """`kustomize build deploy/k8s/overlays/<overlay>`, parsed."""
    out = subprocess.run(
        [str(require_tool(KUSTOMIZE)), "build", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.load_all(out, Loader=_LOADER) if doc]


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


#: the kinds that run the services' pods: the fetcher and classifier are StatefulSets (their
#: pods' stable names are their transactional ids), the others Deployments
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def workloads(objects: Iterable[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def workload_named(objects: Iterable[Obj], name: str) -> Obj:
    found = [o for o in workloads(objects) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one workload {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj, name: str | None = None) -> Obj:
    containers: list[Obj] = pod_spec(workload)["containers"]
    wanted = name or workload["metadata"]["name"]
    return next(c for c in containers if c["name"] == wanted)


def container_env(objects: list[Obj], workload: Obj, name: str | None = None) -> tuple[dict[str, str], set[str]]:
    """The literal environment of a container (its ConfigMaps, then `env` values) and the
    names of the variables whose values come from elsewhere (Secrets)."""
    c = container(workload, name)
    literal: dict[str, str] = {}
    for source in c.get("envFrom", []):
        config_map = named(objects, "ConfigMap", source["configMapRef"]["name"])
        literal.update(config_map.get("data", {}))
    referenced: set[str] = set()
    for var in c.get("env", []):
        if "value" in var:
            literal[var["name"]] = var["value"]
        else:
            referenced.add(var["name"])
    return literal, referenced


# --- settings ------------------------------------------------------------------------------


def settings_env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a pydantic-settings class reads (nested settings too)."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in settings_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names |= settings_env_names(annotation)
            continue
        alias = field.validation_alias
        if alias is None:
            names.add((prefix + field_name).upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names |= {str(choice).upper() for choice in getattr(alias, "choices", ()) if isinstance(choice, str)}
    return names


# --- label selectors and NetworkPolicies ---------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector; an empty selector matches everything."""
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (labels, namespace, named ports) or an outside address."""

    labels: Mapping[str, str]
    namespace: str
    namespace_labels: Mapping[str, str]
    ports: Mapping[str, int]
    ip: str | None = None

    @classmethod
    def pod(cls, labels: Mapping[str, str], namespace: str, ports: Mapping[str, int] | None = None) -> Peer:
        return cls(labels, namespace, {"kubernetes.io/metadata.name": namespace}, ports or {})

    @classmethod
    def address(cls, ip: str) -> Peer:
        return cls({}, "", {}, {}, ip)


def _peer_matches(rule_peer: Mapping[str, Any], peer: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        if peer.ip is None:
            # A pod's address is private and cluster-internal: taken as inside a block only
            # when the block makes no exceptions.
            return not block.get("except")
        address = ipaddress.ip_address(peer.ip)
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address in ipaddress.ip_network(excluded)
            for excluded in block.get("except", [])
            if ipaddress.ip_network(excluded).version == address.version
        )
    if peer.ip is not None:
        return False
    if "namespaceSelector" in rule_peer:
        if not selector_matches(rule_peer["namespaceSelector"], peer.namespace_labels):
            return False
    elif peer.namespace != policy_namespace:
        return False
    return selector_matches(rule_peer.get("podSelector"), peer.labels)


def _port_matches(rule_ports: list[Obj] | None, port: int, target: Peer) -> bool:
    if not rule_ports:
        return True
    for rule_port in rule_ports:
        if rule_port.get("protocol", "TCP") != "TCP":
            continue
        wanted = rule_port.get("port")
        if wanted is None or wanted == port or (isinstance(wanted, str) and target.ports.get(wanted) == port):
            return True
    return False


def allowed(policies: list[Obj], source: Peer, target: Peer, port: int) -> bool:
    """Whether the NetworkPolicies let `source` open a TCP connection to `target:port`
    (both directions checked, as the cluster does)."""
    return _egress_allowed(policies, source, target, port) and _ingress_allowed(policies, source, target, port)


def _selecting(policies: list[Obj], peer: Peer, direction: str) -> list[Obj]:
    if peer.ip is not None:
        return []
    return [
        p
        for p in policies
        if p["metadata"].get("namespace") == peer.namespace
        and selector_matches(p["spec"]["podSelector"], peer.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]


def _egress_allowed(policies: list[Obj], source: Peer, target: Peer, port: int) -> bool:
    selecting = _selecting(policies, source, "Egress")
    if not selecting:
        return True
    return any(
        _port_matches(rule.get("ports"), port, target)
        and (not rule.get("to") or any(_peer_matches(p, target, policy["metadata"]["namespace"]) for p in rule["to"]))
        for policy in selecting
        for rule in policy["spec"].get("egress", [])
    )


def _ingress_allowed(policies: list[Obj], source: Peer, target: Peer, port: int) -> bool:
    selecting = _selecting(policies, target, "Ingress")
    if not selecting:
        return True
    return any(
        _port_matches(rule.get("ports"), port, target)
        and (
            not rule.get("from") or any(_peer_matches(p, source, policy["metadata"]["namespace"]) for p in rule["from"])
        )
        for policy in selecting
        for rule in policy["spec"].get("ingress", [])
    )


# --- CRD schemas ---------------------------------------------------------------------------


def load_crds() -> dict[tuple[str, str, str], Obj]:
    """(group, version, kind) → the version's openAPIV3Schema, from every CRD in .cache/k8s-schemas."""
    if not CRD_DIR.is_dir():
        require_tool(CRD_DIR)
    schemas: dict[tuple[str, str, str], Obj] = {}
    for path in sorted(CRD_DIR.rglob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schemas[(spec["group"], version["name"], spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict_schema(schema: Obj) -> Obj:
    """The schema with unknown fields refused wherever the API server would prune them
    (`kubectl apply` refuses them too: its field validation is strict)."""
    result = copy.deepcopy(schema)
    for node in _schema_nodes(result):
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    # The API server checks metadata as ObjectMeta; the CRD schemas leave it open.
    result.setdefault("properties", {})["metadata"] = {"type": "object"}
    return result


def _schema_nodes(node: Any) -> Iterator[Obj]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schema_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schema_nodes(item)
