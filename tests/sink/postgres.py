"""The throwaway PostgreSQL of `scripts/postgres.sh`, and a fresh schema per test on it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "postgres.sh"


def _script(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), command], cwd=ROOT, capture_output=True, text=True, check=False)


@contextmanager
def cluster() -> Iterator[str]:
    """The URL of the cluster's `tagstream` database; started unless it runs, stopped only if started here."""
    was_running = _script("status").returncode == 0
    started = _script("start")
    if started.returncode != 0:
        pytest.fail(f"scripts/postgres.sh start failed:\n{started.stderr}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        if not was_running:
            _script("stop")


@contextmanager
def fresh_schema(url: str, prefix: str = "test") -> Iterator[str]:
    """A URL whose connections work in a new, empty schema `<prefix>_<random>`, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """The URL of a new, empty database on the cluster, dropped afterwards: for settings that
    apply to a whole database."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
