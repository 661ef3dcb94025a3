"""The parts of the local stack a benchmark needs, started if absent and stopped if we started them."""

from __future__ import annotations

import os
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


def machine_load(at_start: tuple[float, float, float]) -> dict[str, list[float]]:
    """Other work on these cores: the 1, 5 and 15 minute load averages `at_start` (from
    `os.getloadavg()`) and now, to two places."""
    return {"at_start": [round(x, 2) for x in at_start], "at_end": [round(x, 2) for x in os.getloadavg()]}


#: command-line fragments that pick out the local stack's processes
TRITON_PROCESSES = ("tritonserver", "triton_python_backend_stub")
KAFKA_PROCESSES = ("kafka.Kafka",)


def cpu_seconds(patterns: tuple[str, ...] = (), pids: tuple[int, ...] = ()) -> float:
    """User + system CPU seconds used so far by the processes `pids` and by every process whose
    command line contains one of `patterns`."""
    chosen = set(pids) | set(_matching(patterns))
    return sum(_cpu_ticks(pid) for pid in chosen) / os.sysconf("SC_CLK_TCK")


def _matching(patterns: tuple[str, ...]) -> list[int]:
    if not patterns:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if any(p in command for p in patterns):
            found.append(int(entry.name))
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime
