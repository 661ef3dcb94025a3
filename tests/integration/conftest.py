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


def _part(script: str) -> Iterator[None]:
    """Start one part of the stack unless it runs; stop it afterwards only if we started it."""
    was_running = subprocess.run([script, "status"], cwd=ROOT, check=False).returncode == 0
    subprocess.run([script, "start"], cwd=ROOT, check=True)
    yield
    if not was_running:
        subprocess.run([script, "stop"], cwd=ROOT, check=True)


@pytest.fixture(scope="session")
def kafka() -> Iterator[None]:
    """Only the broker, for tests that run their own service processes."""
    yield from _part("scripts/kafka.sh")


@pytest.fixture(scope="session")
def triton() -> Iterator[None]:
    """The stack's Triton (localhost:8001) serving model_repository/cpu."""
    yield from _part("scripts/triton.sh")


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    was_running = _stack("status", check=False) == 0
    _stack("up")
    yield
    if not was_running:
        _stack("down")
