"""The real local stack (Kafka, Triton, the services) for integration tests.

Started with `scripts/stack.sh up` unless already running, and stopped again only if this
session started it, so a developer's running stack is left alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stack(command: str, check: bool = True) -> int:
    return subprocess.run(["scripts/stack.sh", command], cwd=ROOT, check=check).returncode


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    was_running = _stack("status", check=False) == 0
    _stack("up")
    yield
    if not was_running:
        _stack("down")
