"""`python -m bench.run [--only NAME ...]`: run the benchmarks, print a table, write latest.json.

Each `bench/bench_<name>.py` has `run() -> list[Figure]`. A run with `--only` replaces the
figures of the benchmarks it ran and keeps the others from the previous file, each figure
saying when and on which commit it was measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from .figures import Figure

RESULTS = Path(__file__).parent / "results" / "latest.json"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--only", nargs="*", choices=available(), default=None)
    args = parser.parse_args()
    names = args.only or available()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    figures: dict[str, Any] = {k: v for k, v in previous.get("figures", {}).items() if v.get("bench") not in names}
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        results: list[Figure] = module.run()
        for figure in results:
            figures[figure.name] = {**figure.as_json(), "bench": name, "measured_at": measured_at, "commit": commit()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "figures": figures}, indent=2, sort_keys=True) + "\n")
    print_table(figures)
    print(f"\nwritten to {RESULTS}")


def print_table(figures: dict[str, Any]) -> None:
    width = max((len(n) for n in figures), default=10)
    print(f"\n{'figure':<{width}}  {'value':>12}  {'unit':<10}  goal")
    for name in sorted(figures):
        f = figures[name]
        print(f"{name:<{width}}  {f['value']:>12.4g}  {f['unit']:<10}  {f.get('goal') or ''}")


if __name__ == "__main__":
    main()
