"""The NetworkPolicies, evaluated for the connections that matter: each service reaches what
it needs and nothing else; the fetcher reaches the internet but no cluster-internal
address other than Kafka's."""

from __future__ import annotations

import pytest

from .manifests import Obj, Peer, allowed, container, of_kind, selector_matches, workloads

NAMESPACE = "tagstream"
# Labels Strimzi gives the broker pods of the `tagstream` cluster (node pool `dual-role`).
KAFKA_BROKER = Peer.pod(
    {
        "strimzi.io/cluster": "tagstream",
        "strimzi.io/kind": "Kafka",
        "strimzi.io/name": "tagstream-kafka",
        "strimzi.io/pool-name": "dual-role",
        "strimzi.io/broker-role": "true",
    },
    NAMESPACE,
)
DNS = Peer.pod({"k8s-app": "kube-dns"}, "kube-system")
PROMETHEUS = Peer.pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")
OTHER_NAMESPACE_POD = Peer.pod({"app": "something-else"}, "default")
PUBLIC_V4 = Peer.address("93.184.215.14")
PUBLIC_V6 = Peer.address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")
# Cluster-internal and special addresses: pods and Services (private ranges, CGNAT), the
# cloud metadata endpoint, loopback, IPv6 unique-local and link-local.
INTERNAL = [
    Peer.address(ip)
    for ip in (
        "10.96.0.1",
        "172.20.3.4",
        "192.168.1.10",
        "100.64.12.1",
        "169.254.169.254",
        "127.0.0.1",
        "fd00::1",
        "fe80::1",
    )
]


@pytest.fixture
def policies(objects: list[Obj]) -> list[Obj]:
    return of_kind(objects, "NetworkPolicy")


def _pods(objects: list[Obj]) -> dict[str, Peer]:
    pods = {}
    for workload in workloads(objects):
        ports = {p["name"]: p["containerPort"] for p in container(workload).get("ports", [])}
        pods[workload["metadata"]["name"]] = Peer.pod(
            workload["spec"]["template"]["metadata"]["labels"], NAMESPACE, ports
        )
    return pods


def test_every_pod_has_both_directions_restricted(objects: list[Obj], policies: list[Obj]) -> None:
    for name, pod in _pods(objects).items():
        selecting = [p for p in policies if selector_matches(p["spec"]["podSelector"], pod.labels)]
        types = {t for p in selecting for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, f"{name}: {types}"


def test_services_reach_kafka_and_dns(objects: list[Obj], policies: list[Obj]) -> None:
    pods = _pods(objects)
    for name in ("ingest", "fetcher", "classifier", "sink"):
        assert allowed(policies, pods[name], KAFKA_BROKER, 9092), name
        assert allowed(policies, pods[name], DNS, 53), name
    assert not allowed(policies, pods["triton"], KAFKA_BROKER, 9092)


def test_fetcher_reaches_the_internet_but_nothing_internal(objects: list[Obj], policies: list[Obj]) -> None:
    fetcher = _pods(objects)["fetcher"]
    for port in (80, 443):
        assert allowed(policies, fetcher, PUBLIC_V4, port)
        assert allowed(policies, fetcher, PUBLIC_V6, port)
    assert not allowed(policies, fetcher, PUBLIC_V4, 22)
    for address in INTERNAL:
        for port in (80, 443, 8080):
            assert not allowed(policies, fetcher, address, port), address.ip
    for name, pod in _pods(objects).items():
        if name != "fetcher":
            for port in pod.ports.values():
                assert not allowed(policies, fetcher, pod, port), f"fetcher → {name}:{port}"
    assert not allowed(policies, fetcher, OTHER_NAMESPACE_POD, 80)


def test_ingest_reaches_the_x_api_over_https_only(objects: list[Obj], policies: list[Obj]) -> None:
    ingest = _pods(objects)["ingest"]
    assert allowed(policies, ingest, PUBLIC_V4, 443)
    assert not allowed(policies, ingest, PUBLIC_V4, 80)
    for address in INTERNAL:
        assert not allowed(policies, ingest, address, 443), address.ip


def test_classifier_reaches_triton_and_only_the_classifier_does(objects: list[Obj], policies: list[Obj]) -> None:
    pods = _pods(objects)
    triton = pods["triton"]
    assert allowed(policies, pods["classifier"], triton, triton.ports["grpc"])
    assert not allowed(policies, pods["classifier"], triton, triton.ports["http"])
    for name in ("ingest", "fetcher", "sink"):
        assert not allowed(policies, pods[name], triton, triton.ports["grpc"]), name
    assert not allowed(policies, pods["classifier"], PUBLIC_V4, 443)
    assert not allowed(policies, OTHER_NAMESPACE_POD, triton, triton.ports["grpc"])


def test_sink_and_triton_reach_nothing_outside(objects: list[Obj], policies: list[Obj]) -> None:
    pods = _pods(objects)
    for name in ("sink", "triton", "classifier"):
        assert not allowed(policies, pods[name], PUBLIC_V4, 443), name
        for address in INTERNAL:
            assert not allowed(policies, pods[name], address, 443), (name, address.ip)


def test_prometheus_scrapes_every_metrics_port(objects: list[Obj], policies: list[Obj]) -> None:
    for name, pod in _pods(objects).items():
        assert allowed(policies, PROMETHEUS, pod, pod.ports["metrics"]), name
        assert not allowed(policies, OTHER_NAMESPACE_POD, pod, pod.ports["metrics"]), name


def test_sink_api_is_open_inside_the_namespace_only(objects: list[Obj], policies: list[Obj]) -> None:
    pods = _pods(objects)
    sink = pods["sink"]
    reader = Peer.pod({"run": "reader"}, NAMESPACE)
    assert allowed(policies, reader, sink, sink.ports["api"])
    assert allowed(policies, Peer.pod({"app": "controller"}, "ingress-nginx"), sink, sink.ports["api"])
    assert not allowed(policies, OTHER_NAMESPACE_POD, sink, sink.ports["api"])


def test_kafka_listener_admits_the_services_and_keda(objects: list[Obj]) -> None:
    """Strimzi writes the broker pods' ingress policy from the listener's peers."""
    kafka = of_kind(objects, "Kafka")[0]
    plain = next(listener for listener in kafka["spec"]["kafka"]["listeners"] if listener["name"] == "plain")
    policy = {
        "metadata": {"name": "broker", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"strimzi.io/name": "tagstream-kafka"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": plain["networkPolicyPeers"], "ports": [{"port": plain["port"]}]}],
        },
    }
    pods = _pods(objects)
    for name in ("ingest", "fetcher", "classifier", "sink"):
        assert allowed([policy], pods[name], KAFKA_BROKER, 9092), name
    keda = Peer.pod({"app": "keda-operator"}, "keda")
    assert allowed([policy], keda, KAFKA_BROKER, 9092)
    assert allowed([policy], Peer.pod({"tagstream.io/kafka-client": "true"}, NAMESPACE), KAFKA_BROKER, 9092)
    assert not allowed([policy], pods["triton"], KAFKA_BROKER, 9092)
    assert not allowed([policy], OTHER_NAMESPACE_POD, KAFKA_BROKER, 9092)
