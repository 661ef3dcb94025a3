"""The container image, really built and run: `scripts/image.sh build` (what `make image`
runs), then the four services from it against the local Kafka and Triton. Each answers
/healthz, runs as uid 10001 on a read-only root filesystem, and a post replayed by the
ingest container comes out of the sink container's API with its hashtags.

The containers use ports and topics of their own (free ports, fresh topics and groups), so
the shared stack is untouched. They are removed afterwards; `make down` removes any a killed
run left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from .processes import ROOT, free_port, fresh_topics, wait_until
from .test_gallery import ImageServer

pytestmark = pytest.mark.integration

IMAGE = "localhost/tagstream:latest"
SERVICES = ("ingest", "fetcher", "classifier", "sink")
UID = 10001
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def image_sh(*args: str, check: bool = True, image: str = IMAGE) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        ["scripts/image.sh", *args], cwd=ROOT, capture_output=True, check=False, env={**os.environ, "IMAGE": image}
    )
    if check and done.returncode != 0:
        raise AssertionError(f"scripts/image.sh {' '.join(args)} failed:\n{done.stdout!r}\n{done.stderr.decode()}")
    return done


def podman(*args: str, check: bool = True) -> str:
    return image_sh("podman", *args, check=check).stdout.decode()


@pytest.fixture(scope="module")
def image() -> str:
    started = time.monotonic()
    image_sh("build")
    print(f"image built (or found up to date) in {time.monotonic() - started:.0f} s")
    return IMAGE


def replay_line(tweet_id: str, media_key: str, url: str) -> str:
    """One post as the X filtered stream delivers it, matching a targeted rule (priority 2)."""
    return json.dumps(
        {
            "data": {
                "id": tweet_id,
                "text": "a post replayed into the containers",
                "author_id": "4242",
                "created_at": "2026-11-23T12:00:00.000Z",
                "edit_history_tweet_ids": [tweet_id],
                "attachments": {"media_keys": [media_key]},
            },
            "includes": {
                "media": [{"media_key": media_key, "type": "photo", "url": url, "width": 320, "height": 320}],
                "users": [{"id": "4242", "username": "image_test", "name": "Image test"}],
            },
            "matching_rules": [{"id": "1", "tag": "targeted:dogs"}],
        }
    )


class Containers:
    """The four services from the image, each on its own ports and topics."""

    def __init__(self, tmp_path: Path, image_origin: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.names = {service: f"tagstream-test-{service}-{run}" for service in SERVICES}
        self.ports = {service: free_port() for service in SERVICES}
        self.api_port = free_port()
        self.topics = fresh_topics("tweets", "tweets-dlq", "images", "predictions", partitions=1)
        tweets, tweets_dlq, images, predictions = self.topics
        self.tweet_id = str(1_900_000_000_000_000_000 + int(run, 16) % 1_000_000)
        self.media_key = f"3_{self.tweet_id}"
        stream = tmp_path / "stream.jsonl"
        stream.write_text(replay_line(self.tweet_id, self.media_key, f"{image_origin}/3.png") + "\n")
        classifier_group = f"test-classifier-{run}"
        self.env: dict[str, dict[str, str]] = {
            "ingest": {
                "INGEST_OUTPUT_TOPIC": tweets,
                "INGEST_DLQ_TOPIC": tweets_dlq,
                "INGEST_REPLAY_FILE": "/data/stream.jsonl",
            },
            "fetcher": {
                "FETCHER_INPUT_TOPIC": tweets,
                "FETCHER_OUTPUT_TOPIC": images,
                "FETCHER_GROUP_ID": f"test-fetcher-{run}",
                "FETCHER_DOWNSTREAM_GROUP": classifier_group,
                "FETCHER_ALLOW_PRIVATE_NETWORKS": "true",  # the image server is on loopback
            },
            "classifier": {
                "CLASSIFIER_INPUT_TOPIC": images,
                "CLASSIFIER_OUTPUT_TOPIC": predictions,
                "CLASSIFIER_GROUP_ID": classifier_group,
                "CLASSIFIER_TRITON_URL": "localhost:8001",
            },
            "sink": {
                "SINK_INPUT_TOPIC": predictions,
                "SINK_GROUP_ID": f"test-sink-{run}",
                "SINK_API_HOST": "127.0.0.1",
                "SINK_API_PORT": str(self.api_port),
                "SINK_DATABASE_PATH": "/tmp/predictions.db",  # the tmpfs of a read-only container
            },
        }
        for service in SERVICES:
            self.env[service][f"{service.upper()}_METRICS_PORT"] = str(self.ports[service])
        self.volumes = {"ingest": [f"{stream}:/data/stream.jsonl:ro"]}
        self.log_dir = tmp_path

    def start(self) -> None:
        for service in SERVICES:
            options = ["--detach", "--name", self.names[service]]
            for key, value in self.env[service].items():
                options += ["--env", f"{key}={value}"]
            for volume in self.volumes.get(service, []):
                options += ["--volume", volume]
            image_sh("run", *options, f"services.{service}")

    def remove(self) -> None:
        for service, name in self.names.items():
            logs = image_sh("podman", "logs", name, check=False)
            (self.log_dir / f"{service}.log").write_bytes(logs.stdout + logs.stderr)
            podman("rm", "--force", "--time", "5", name, check=False)
        AdminClient({"bootstrap.servers": "localhost:9092"}).delete_topics(
            [*self.topics, *(f"{t}.dlq" for t in self.topics), *(f"{t}.shed" for t in self.topics)]
        )

    def healthz(self, service: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[service]}/healthz", timeout=3) as response:
                return int(response.status)
        except (urllib.error.URLError, OSError):
            return 0

    def running(self, service: str) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.names[service]).strip() == "true"


@pytest.fixture
def containers(image: str, kafka: None, triton: None, tmp_path: Path) -> Iterator[Containers]:
    with ImageServer() as images:
        group = Containers(tmp_path, images.origin)
        try:
            group.start()
            yield group
        finally:
            group.remove()


def test_the_four_services_run_from_the_image(containers: Containers) -> None:
    for service in SERVICES:

        def ready_or_gone(service: str = service) -> bool:
            return containers.healthz(service) == 200 or not containers.running(service)

        wait_until(f"{service} in its container answers /healthz", ready_or_gone, timeout_s=180)
        assert containers.running(service), f"{service} exited: its log is in {containers.log_dir}"
        assert containers.healthz(service) == 200, service

    for service, name in containers.names.items():
        # Every process of the container, seen from the host: the init and the service.
        top = podman("top", name, "hpid", "args").splitlines()[1:]
        pids = {int(line.split()[0]): line for line in top}
        assert any("python -m services." + service in line for line in pids.values()), top
        for pid, line in pids.items():
            status = dict(
                row.split(":", 1) for row in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in row
            )
            assert status["Uid"].split() == [str(UID)] * 4, f"{service}: {line}: Uid {status['Uid']}"
            assert status["Gid"].split() == [str(UID)] * 4, f"{service}: {line}: Gid {status['Gid']}"

        assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).strip() == "true"
        for path in ("/opt/tagstream/written", "/app/written", "/etc/written"):
            wrote = image_sh("podman", "exec", name, "python", "-c", f"open({path!r}, 'w')", check=False)
            assert wrote.returncode != 0, f"{service} could write {path}"
            assert b"Read-only file system" in wrote.stderr, wrote.stderr

    # The replayed post, through ingest → fetcher → classifier → sink, all four in containers.
    url = f"http://127.0.0.1:{containers.api_port}/api/predictions/{containers.tweet_id}/{containers.media_key}"
    stored: dict[str, Any] = {}

    def arrived() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                stored.update(json.load(response))
                return True
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            return False

    wait_until("the replayed post's prediction in the sink container's API", arrived, timeout_s=180)
    assert stored["tweet_id"] == containers.tweet_id
    assert stored["hashtags"], stored


def test_the_build_left_the_host_ca_bundle_out_of_the_image(image: str) -> None:
    """The host's bundle is mounted for the build's downloads only: the image keeps its base's."""

    def bundle(of: str) -> str:
        return hashlib.sha256(image_sh("run", "--rm", "--entrypoint", "cat", CA_BUNDLE, image=of).stdout).hexdigest()

    base = podman("image", "inspect", "--format", "{{.Id}}", _base_name()).strip()
    assert bundle(image) == bundle(base)
    host = hashlib.sha256(Path(CA_BUNDLE).read_bytes()).hexdigest()
    if host == bundle(base):
        pytest.skip("the host's CA bundle is the base's own: a leak could not be told apart")
    assert bundle(image) != host
    env = json.loads(podman("image", "inspect", "--format", "{{json .Config.Env}}", image))
    assert not [e for e in env if e.startswith("PIP_")], env


def _base_name() -> str:
    first = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.upper().startswith("FROM "))
    return first.split()[1]
