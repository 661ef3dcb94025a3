"""Real processes for integration tests: a service of ours, or a Triton server of its own.

Tests that change what a service reads (its topics, group, ports) run their own process
instead of the stack's, so they neither disturb it nor depend on its state.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings
from services.common.stages import TopicSpec

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fresh_topics(*names: str, partitions: int = 3) -> list[str]:
    """Topics no other test or service uses: `<name>-<random>`, created now."""
    unique = [f"test-{name}-{uuid.uuid4().hex[:8]}" for name in names]
    ensure_topics(KafkaSettings(), [TopicSpec(name, partitions) for name in unique])
    return unique


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> None:
    """Poll `check` every `every_s` until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")
        time.sleep(every_s)


def wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before {url} answered") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s} s") from None
            time.sleep(0.3)


def metric(url: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels contain `labels`, from a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for found_labels, value in pattern.findall(page) if labels in (found_labels or ""))


@contextmanager
def service(name: str, env: dict[str, str], log_path: Path, health_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.<name>` with `env` added, ready on its /healthz, stopped afterwards."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{health_port}/healthz", 120, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Triton:
    """A Triton server of a test's own, through scripts/triton.sh, on free ports."""

    def __init__(self, run_dir: Path, model_repository: Path, ready_model: str) -> None:
        self.grpc_port = free_port()
        self.env = {
            **os.environ,
            "RUN_DIR": str(run_dir),
            "MODEL_REPOSITORY": str(model_repository),
            "TRITON_READY_MODEL": ready_model,
            "HTTP_PORT": str(free_port()),
            "GRPC_PORT": str(self.grpc_port),
            "METRICS_PORT": str(free_port()),
        }

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def start(self) -> None:
        subprocess.run(["scripts/triton.sh", "start"], cwd=ROOT, env=self.env, check=True)

    def stop(self) -> None:
        subprocess.run(["scripts/triton.sh", "stop"], cwd=ROOT, env=self.env, check=True)
