"""The parts of the local stack a benchmark needs, started if absent and stopped if we started them."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running(*scripts: str) -> Iterator[None]:
    started = []
    try:
        for script in scripts:
            if subprocess.run([script, "status"], cwd=ROOT, check=False, capture_output=True).returncode != 0:
                subprocess.run([script, "start"], cwd=ROOT, check=True)
                started.append(script)
        yield
    finally:
        for script in reversed(started):
            subprocess.run([script, "stop"], cwd=ROOT, check=False)


def free_port() -> int:
    """A TCP port nothing listens on now, for a process the benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
