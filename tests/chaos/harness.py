"""A chaos run: the pipeline on topics of its own while its stages, the broker and Triton fail.

The fetcher, classifier and sink run as processes of the run's own, each restarted at once
after a kill -9, as Kubernetes restarts a pod. Ingest replays a recorded stream into the run's
`tweets` topic; meanwhile, at moments drawn from a seeded random generator, stages are killed,
the broker is killed and started again, and Triton is stopped for a while.

Afterwards everything is counted by read_committed consumers reading the run's topics from
the start: every image must be accounted for exactly once, as a prediction, a dead letter or
a shed copy, and the sink's store must hold each predicted image once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from services.common.avro import IMAGES, PREDICTIONS, TWEETS
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.stages import TopicSpec
from tests.integration.processes import ROOT, Triton, free_port, wait_http
from tools import demo_data

STAGES = ("fetcher", "classifier", "sink")
ImageKey = tuple[str, str]  # tweet id, media key


@dataclass(frozen=True)
class Event:
    at_s: float
    action: str  # kill, broker, triton
    target: str


def schedule(
    rng: random.Random, duration_s: float, kills: int, broker_kills: int, triton_outage: bool, brokers: int
) -> list[Event]:
    """When to do what during the replay: `kills` kill -9 per stage, `broker_kills` broker nodes
    killed (one at a time, each on the next node), Triton stopped once. The replay is cut into
    one slot per event, in a shuffled order, and each event falls at a random moment of the
    first half of its slot: failures come one after another, so each one's recovery is its own."""
    actions = [("kill", stage) for stage in STAGES for _ in range(kills)]
    actions += [("broker", str(n % brokers + 1)) for n in range(broker_kills)]
    actions += [("triton", "triton")] if triton_outage else []
    rng.shuffle(actions)
    slot = duration_s / max(len(actions), 1)
    return [Event(slot * (i + rng.uniform(0.05, 0.5)), action, target) for i, (action, target) in enumerate(actions)]


@dataclass
class Kill:
    target: str
    at: float  # monotonic, when it failed
    ended: float  # when it was started again
    recovered_at: float | None = None

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.at


@dataclass
class Report:
    seed: int
    expected: set[ImageKey]
    bad: set[ImageKey]
    predicted: Counter[ImageKey]
    dead_letters: Counter[ImageKey]
    shed: Counter[ImageKey]
    stored: Counter[ImageKey]
    kills: list[Kill]
    transactions_aborted: int = 0
    #: stage → the times it ended by itself (and was started again)
    exits: dict[str, list[Exit]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    logs: Path = Path()

    def accounted(self) -> Counter[ImageKey]:
        return self.predicted + self.dead_letters + self.shed

    @property
    def lost(self) -> set[ImageKey]:
        accounted = self.accounted()
        return {key for key in self.expected | self.bad if accounted[key] == 0}

    @property
    def duplicated(self) -> dict[ImageKey, int]:
        return {key: n for key, n in self.accounted().items() if n > 1}

    @property
    def unexpected(self) -> set[ImageKey]:
        return set(self.accounted()) - self.expected - self.bad

    def recoveries(self, target: str | None = None) -> list[float]:
        return sorted(k.recovery_s for k in self.kills if k.recovery_s is not None and target in (None, k.target))

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost, e.g. {sorted(self.lost)[:3]}")
        if self.duplicated:
            out.append(f"{len(self.duplicated)} duplicated, e.g. {sorted(self.duplicated.items())[:3]}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected, e.g. {sorted(self.unexpected)[:3]}")
        if self.predicted.keys() & self.bad:
            out.append(f"broken images predicted: {sorted(self.predicted.keys() & self.bad)[:3]}")
        if set(self.stored) != set(self.predicted) or any(n != 1 for n in self.stored.values()):
            out.append(f"the sink holds {len(self.stored)} images, {len(self.predicted)} were predicted")
        return out

    def table(self) -> str:
        rows = [
            ("seed", str(self.seed)),
            ("images sent (good + broken)", f"{len(self.expected)} + {len(self.bad)}"),
            ("predicted / dead-lettered / shed", f"{sum(self.predicted.values())} / "
             f"{sum(self.dead_letters.values())} / {sum(self.shed.values())}"),
            ("lost", str(len(self.lost))),
            ("duplicated", str(len(self.duplicated))),
            ("held by the sink", str(len(self.stored))),
            ("transactions aborted and redone", str(self.transactions_aborted)),
            ("exits by themselves (stage: code reason)", "; ".join(
                f"{n}: {e.code} {e.reason[:80]}" for n, exits in self.exits.items() for e in exits) or "none"),
        ]  # fmt: skip
        for target in (*STAGES, "broker", "triton"):
            kills = [k for k in self.kills if k.target == target or (target == "broker" and k.target.isdigit())]
            if kills:
                times = sorted(k.recovery_s for k in kills if k.recovery_s is not None)
                described = ", ".join(f"{t:.1f}" for t in times) or "-"
                rows.append((f"{target}: failures, recovery s", f"{len(kills)}: {described}"))
        every = self.recoveries()
        if every:
            rows.append(
                ("recovery p50 / p99 / max s", f"{_pct(every, 50):.1f} / {_pct(every, 99):.1f} / {every[-1]:.1f}")
            )
        rows.append(("run time s", f"{self.elapsed_s:.0f}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class Topics:
    """The run's own topics, named after the pipeline's."""

    def __init__(self, run: str) -> None:
        self.tweets, self.images, self.predictions = (f"chaos-{run}-{t}" for t in ("tweets", "images", "predictions"))

    def specs(self, replicas: int) -> list[TopicSpec]:
        config = {"min.insync.replicas": str(min(2, replicas))}
        specs = [TopicSpec(t, 3, config) for t in (self.tweets, self.images, self.predictions)]
        return specs + [
            TopicSpec(t + suffix, 1, config)
            for t in (self.tweets, self.images, self.predictions)
            for suffix in (".dlq", ".shed")
        ]


@dataclass(frozen=True)
class Exit:
    """A stage that ended by itself: its exit code (negative: the signal that ended it) and the
    reason it logged, if any."""

    code: int
    reason: str

    @property
    def planned(self) -> bool:
        """An exit the code makes on purpose when a client library is stuck beyond repair
        (services/common/kafka.py): the restart is the remedy, as in Kubernetes."""
        return any(cause in self.reason for cause in LIBRARY_STUCK)


#: what a stage logs when it ends because a library call never returned
LIBRARY_STUCK = ("did not return within",)


class Stage:
    """One stage's process, started again at once after a kill, as a pod is; and, as
    Kubernetes does, after it exits by itself (`restart_if_exited`), which is counted."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, port: int) -> None:
        self.name, self.env, self.port = name, env, port
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.exits: list[Exit] = []  # the times it ended by itself
        self._log_start = 0  # where the running process's lines begin in its log
        self.stopping = False
        self._lock = threading.Lock()

    def restart_if_exited(self) -> None:
        with self._lock:
            if self.stopping or self.process is None or self.process.poll() is None:
                return
            self.exits.append(Exit(self.process.returncode, self._reason()))
            self._launch()

    def kill_and_restart(self) -> None:
        with self._lock:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self._launch()

    def start(self, wait: bool = True) -> None:
        with self._lock:
            self._launch()
        if wait:
            assert self.process is not None
            wait_http(f"http://127.0.0.1:{self.port}/livez", 120, self.process)

    def _reason(self) -> str:
        """Why the last process said it stopped: its last critical line's reason."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            lines = log.read().decode(errors="replace").splitlines()
        return next((_field(line, "reason") for line in reversed(lines) if '"level": "critical"' in line), "")

    def tail(self, lines: int) -> list[str]:
        """The last warnings and errors of the stage's log (librdkafka's own lines left out)."""
        with suppress(FileNotFoundError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return [line[:300] for line in text if '"level": "info"' not in line and not line.startswith("%")][-lines:]
        return []

    def _launch(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


#: the counter that says a stage's output flows; it restarts from 0 with the process
COUNTERS = {
    "fetcher": "tagstream_records_produced_total{",
    "classifier": "tagstream_records_produced_total{",
    "sink": "tagstream_records_consumed_total{",
}


class Flow(threading.Thread):
    """When each stage's output flows: samples of every stage's own counter (records produced,
    for the sink records consumed), so a restarted process's first output is seen; and when
    predictions arrive on their topic, for the failures of the broker and Triton."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, stages: dict[str, Stage]) -> None:
        super().__init__(daemon=True)
        self.kafka, self.topics, self.stages = kafka, topics, stages
        self.ports = {name: stage.port for name, stage in stages.items()}
        self.outputs: dict[str, list[tuple[float, float]]] = {name: [] for name in stages}  # (time, counter)
        self.predictions: list[float] = []
        self._halt = threading.Event()

    def recovered(self, kill: Kill) -> float | None:
        """When output flowed again after `kill`: the restarted stage's first output; after a
        broker node's kill the next prediction (a cluster of three goes on without it); after
        Triton's outage the first prediction once it is back."""
        if kill.target in self.outputs:
            return next((t for t, count in self.outputs[kill.target] if t > kill.at and count > 0), None)
        since = kill.ended if kill.target == "triton" else kill.at
        return next((t for t in self.predictions if t > since), None)

    def run(self) -> None:
        consumer = _reader(self.kafka)
        # Assigned, not subscribed: no group to rejoin after the broker comes back.
        partitions = (
            consumer.list_topics(self.topics.predictions, timeout=30).topics[self.topics.predictions].partitions
        )
        consumer.assign([TopicPartition(self.topics.predictions, p, OFFSET_END) for p in partitions])
        try:
            while not self._halt.is_set():
                for message in consumer.consume(num_messages=500, timeout=0.1):
                    if message.error() is None:
                        self.predictions.append(time.monotonic())
                for stage in self.stages.values():  # the supervisor's part: a stage that died is started again
                    stage.restart_if_exited()
                for name, port in self.ports.items():
                    count = _counter(port, COUNTERS[name])
                    if count is not None:
                        self.outputs[name].append((time.monotonic(), count))
        finally:
            consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def _counter(port: int, prefix: str) -> float | None:
    """The sum of a counter's series on a process's /metrics, None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


#: librdkafka's own log lines (a broker down on purpose is expected) go here, not to stderr
_CLIENT_LOG = logging.getLogger("chaos.kafka-client")
_CLIENT_LOG.setLevel(logging.CRITICAL)


def _reader(kafka: KafkaSettings, group: str | None = None) -> Consumer:
    return Consumer(
        kafka.client_config()
        | {
            "logger": _CLIENT_LOG,
            "group.id": group or f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )


def read_all(kafka: KafkaSettings, topics: list[str], timeout_s: float = 120) -> dict[str, list[Any]]:
    """Every committed record of `topics`, from the start to the end as of now."""
    consumer = _reader(kafka)
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        for partition in consumer.list_topics(topic, timeout=30).topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            ends[(topic, partition)] = high
    consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
    pending = {tp for tp, high in ends.items() if high > 0}
    out: dict[str, list[Any]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                tp = (str(message.topic()), message.partition() or 0)
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(tp)
                    continue
                out[tp[0]].append(message)
    finally:
        consumer.close()
    if pending:
        raise TimeoutError(f"not read to the end: {sorted(pending)}")
    return out


def sent_images(records: list[Any]) -> tuple[set[ImageKey], set[ImageKey]]:
    """(good, broken) images of the posts ingest wrote: the demo's photos, and the rest."""
    good: set[ImageKey] = set()
    bad: set[ImageKey] = set()
    for message in records:
        tweet = TWEETS.decode(message.value())
        for media in tweet["media"]:
            key = (tweet["tweet_id"], media["media_key"])
            (good if "/photo-" in media["url"] else bad).add(key)
    return good, bad


def account(kafka: KafkaSettings, topics: Topics, sink_db: Path, seed: int, kills: list[Kill]) -> Report:
    names = [topics.tweets, topics.predictions, topics.tweets + ".dlq", topics.images + ".dlq"]
    names += [topics.tweets + ".shed", topics.images + ".shed", topics.predictions + ".dlq"]
    records = read_all(kafka, names)
    good, bad = sent_images(records[topics.tweets])
    media_of: dict[str, list[str]] = {}
    for message in records[topics.tweets]:
        tweet = TWEETS.decode(message.value())
        media_of[tweet["tweet_id"]] = [m["media_key"] for m in tweet["media"]]
    predicted = Counter(_origin(PREDICTIONS.decode(m.value())) for m in records[topics.predictions])
    dead = Counter[ImageKey]()
    for message in records[topics.tweets + ".dlq"]:
        if message.key() is None:  # ingest's: a line that was not a post, no image of ours
            continue
        tweet_id, headers = message.key().decode(), dict(message.headers() or [])
        if "media_key" in headers:  # the fetcher's, one per image of a post
            dead[(tweet_id, headers["media_key"].decode())] += 1
        else:  # the whole post (it could not be read): each of its images
            for media_key in media_of.get(tweet_id, []):
                dead[(tweet_id, media_key)] += 1
    for message in records[topics.images + ".dlq"] + records[topics.predictions + ".dlq"]:
        value = message.value()
        codec = IMAGES if message.topic().startswith(topics.images) else PREDICTIONS
        dead[_origin(codec.decode(value))] += 1
    shed = Counter[ImageKey]()
    for message in records[topics.tweets + ".shed"]:  # a whole post
        tweet_id = message.key().decode()
        for media_key in media_of.get(tweet_id, []):
            shed[(tweet_id, media_key)] += 1
    for message in records[topics.images + ".shed"]:
        shed[_origin(IMAGES.decode(message.value()))] += 1
    with sqlite3.connect(sink_db) as db:
        stored = Counter((str(t), str(m)) for t, m in db.execute("SELECT tweet_id, media_key FROM predictions"))
    return Report(seed, good, bad, predicted, dead, shed, stored, kills)


def _origin(record: dict[str, Any]) -> ImageKey:
    return (record["origin"]["tweet_id"], record["origin"]["media_key"])


@dataclass
class Plan:
    seed: int
    duration_s: float = 90.0
    rate: float = 3.0  # posts per second
    kills: int = 3  # per stage
    broker_kills: int = 1
    broker_down_s: float = 3.0
    triton_outage_s: float = 10.0
    brokers: int = 1
    settle_timeout_s: float = 180.0
    extra_env: dict[str, str] = field(default_factory=dict)


def run(plan: Plan, work: Path) -> Report:
    rng = random.Random(plan.seed)
    started = time.monotonic()
    topics = Topics(uuid.uuid4().hex[:8])
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        cluster = Cluster(work / "kafka", plan.brokers)
        cluster.start()
        stack.callback(cluster.stop)
        kafka = cluster.settings
        ensure_topics(kafka, topics.specs(plan.brokers))
        images_url = stack.enter_context(_image_server(work / "images"))
        triton = Triton(work / "triton", ROOT / "model_repository" / "cpu", ready_model="noop")
        triton.start()
        stack.callback(triton.stop)
        stages = _stages(topics, triton.grpc_url, work, plan, cluster.bootstrap)
        for stage in stages.values():
            stage.start()
            stack.callback(stage.stop)
        flow = Flow(kafka, topics, stages)
        flow.start()
        stack.callback(flow.stop)
        stream = work / "stream.jsonl"
        demo_data.write_stream(stream, images_url)
        replay = _replay(stream, topics, plan, work, cluster.bootstrap)
        events = schedule(rng, plan.duration_s, plan.kills, plan.broker_kills, plan.triton_outage_s > 0, plan.brokers)
        kills = _play(events, stages, triton, cluster, plan)
        if replay.wait(plan.duration_s + 120) != 0:
            raise RuntimeError(f"the replay failed: see {work / 'replay.log'}")
        _settle(kafka, topics, work / "sink.db", plan.seed, plan.settle_timeout_s, stages)
        for kill in kills:
            kill.recovered_at = flow.recovered(kill)
        for stage in stages.values():
            stage.stop()
        aborted = _aborted(work)
        report = account(kafka, topics, work / "sink.db", plan.seed, kills)
        report.exits = {name: stage.exits for name, stage in stages.items()}
    report.transactions_aborted = aborted
    report.elapsed_s = time.monotonic() - started
    report.logs = work
    return report


class Cluster:
    """A Kafka cluster of the run's own (scripts/kafka.sh with a run directory and ports of its
    own): its data holds only the run's topics, so a node killed -9 recovers in seconds, and
    the shared broker is left alone."""

    def __init__(self, run_dir: Path, nodes: int) -> None:
        self.nodes = nodes
        port, metrics = _free_ports(2 * nodes), _free_ports(nodes)
        self.env = {
            **os.environ,
            "RUN_DIR": str(run_dir),
            "KAFKA_NODES": str(nodes),
            "KAFKA_PORT": str(port),
            "KAFKA_METRICS_PORT": str(metrics),
        }
        self.bootstrap = ",".join(f"localhost:{port + 2 * n}" for n in range(nodes))
        self.run_dir = run_dir

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap)

    def start(self, *nodes: str) -> None:
        subprocess.run(["scripts/kafka.sh", "start", *nodes], cwd=ROOT, env=self.env, check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(["scripts/kafka.sh", "stop"], cwd=ROOT, env=self.env, check=True, capture_output=True)

    def kill(self, node: str) -> None:
        pid_file = self.run_dir / ("kafka.pid" if self.nodes == 1 else f"kafka-{node}.pid")
        with suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def _field(line: str, name: str) -> str:
    """A field of a structured log line; empty when the line is not one."""
    with suppress(ValueError, AttributeError):
        return str(json.loads(line).get(name, ""))
    return ""


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000)  # below the ephemeral range, where a client may land
        if all(_port_free(base + n) for n in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _stages(topics: Topics, triton_url: str, work: Path, plan: Plan, bootstrap: str) -> dict[str, Stage]:
    run = topics.tweets.split("-")[1]
    ports = {name: free_port() for name in STAGES}
    common = {"LOG_LEVEL": "INFO", "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **plan.extra_env}
    envs = {
        "fetcher": {
            "FETCHER_INPUT_TOPIC": topics.tweets,
            "FETCHER_OUTPUT_TOPIC": topics.images,
            "FETCHER_GROUP_ID": f"chaos-fetcher-{run}",
            "FETCHER_DOWNSTREAM_GROUP": f"chaos-classifier-{run}",
            "FETCHER_ALLOW_PRIVATE_NETWORKS": "true",
            "FETCHER_INSTANCE_ID": "chaos-0",
        },
        "classifier": {
            "CLASSIFIER_INPUT_TOPIC": topics.images,
            "CLASSIFIER_OUTPUT_TOPIC": topics.predictions,
            "CLASSIFIER_GROUP_ID": f"chaos-classifier-{run}",
            "CLASSIFIER_TRITON_URL": triton_url,
            "CLASSIFIER_MODEL_NAME": "noop",
            "CLASSIFIER_INSTANCE_ID": "chaos-0",
            # The replay repeats the demo's few photos: with the prediction cache on, Triton's
            # outage would go unseen once they are scored.
            "CLASSIFIER_PREDICTION_CACHE_TTL_S": "0",
        },
        "sink": {
            "SINK_INPUT_TOPIC": topics.predictions,
            "SINK_GROUP_ID": f"chaos-sink-{run}",
            "SINK_DATABASE_PATH": str(work / "sink.db"),
            "SINK_API_PORT": str(free_port()),
            "SINK_INSTANCE_ID": "chaos-0",
        },
    }
    return {
        name: Stage(name, common | envs[name] | {f"{name.upper()}_METRICS_PORT": str(ports[name])}, work, ports[name])
        for name in STAGES
    }


@contextmanager
def _image_server(directory: Path) -> Iterator[str]:
    demo_data.write_images(directory)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/photo-00.jpg", 30, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def _replay(stream: Path, topics: Topics, plan: Plan, work: Path, bootstrap: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "INGEST_OUTPUT_TOPIC": topics.tweets, "INGEST_DLQ_TOPIC": topics.tweets + ".dlq"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    args = [sys.executable, "-m", "services.ingest", "replay", str(stream), "--rate", str(plan.rate)]
    args += ["--duration", str(plan.duration_s), "--high-share", "0.5"]
    with (work / "replay.log").open("ab") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _play(events: list[Event], stages: dict[str, Stage], triton: Triton, cluster: Cluster, plan: Plan) -> list[Kill]:
    """Do each event at its time; return the kills, each with when it happened."""
    started = time.monotonic()
    kills: list[Kill] = []
    for event in events:
        delay = started + event.at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        at = time.monotonic()
        print(f"chaos: {at - started:6.1f} s {event.action} {event.target}", flush=True)
        if event.action == "kill":
            stages[event.target].kill_and_restart()
        elif event.action == "broker":
            cluster.kill(event.target)
            time.sleep(plan.broker_down_s)
            cluster.start(event.target)
        else:
            triton.stop()
            time.sleep(plan.triton_outage_s)
            triton.start()
        kills.append(Kill(event.target, at, time.monotonic()))
    return kills


def _settle(
    kafka: KafkaSettings, topics: Topics, sink_db: Path, seed: int, timeout_s: float, stages: dict[str, Stage]
) -> None:
    """Wait until every image sent is accounted for and the sink holds what was predicted; if
    that does not happen, say so with each stage's last warnings (CI keeps no logs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = account(kafka, topics, sink_db, seed, [])
        if not report.lost and set(report.stored) == set(report.predicted):
            return
        if time.monotonic() > deadline:
            tails = "".join(
                f"\n--- {name} ({'running' if stage.process and stage.process.poll() is None else 'ended'}, "
                f"exits {stage.exits}):\n" + "\n".join(stage.tail(8))
                for name, stage in stages.items()
            )
            raise TimeoutError(f"not settled within {timeout_s} s: {report.problems()}{tails}")
        time.sleep(2)


def _aborted(work: Path) -> int:
    count = 0
    for name in ("fetcher", "classifier"):
        path = work / f"{name}.log"
        with suppress(FileNotFoundError):
            count += sum(1 for line in path.read_text(errors="replace").splitlines() if "transaction aborted" in line)
    return count
