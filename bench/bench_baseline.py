"""This tree against an earlier commit, side by side: the classifier's CPU per image.

Figures taken in different runs move with the machine's load by more than the changes they
are meant to judge (the same code measured 0.29 and 0.53 ms per image hours apart here). So
both are measured in one run, alternated: the classifier of `BENCH_BASE` (default: the last
commit before the stream loop was split into parts) and this tree's, under each processing
guarantee, on the same pre-produced `images` records (noop model, raw pixels), through
`bench_classifier.classifier_run` of each tree. The base is checked out as a git worktree
under `.cache/bench-base/`; a clone without that commit (a shallow one) skips this benchmark.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .figures import Figure
from .stack import ROOT, machine_load, running

BASE = os.environ.get("BENCH_BASE", "b458ac8")
ROUNDS = int(os.environ.get("BENCH_BASE_ROUNDS", "6"))
IMAGES = 3000

#: run in each tree, with that tree on the path: one classifier run, as JSON
_ONE_RUN = f"""
import json
from bench.bench_classifier import classifier_run, sample_pixels
rate, cpu = classifier_run("noop", sample_pixels(16), {IMAGES}, 16, 4, "raw")
print(json.dumps({{"rate": rate, "cpu": cpu}}))
"""

#: the sides, and the environment each runs its classifier with
SIDES: dict[str, dict[str, str]] = {
    "base": {},
    "at_least_once": {"CLASSIFIER_PROCESSING_GUARANTEE": "at_least_once"},
    "exactly_once": {"CLASSIFIER_PROCESSING_GUARANTEE": "exactly_once"},
}


def base_tree(revision: str) -> Path | None:
    """A worktree of `revision`, made once; None when this clone does not hold it."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        return None
    sha = found.stdout.strip()
    tree = ROOT / ".cache" / "bench-base" / sha
    if not (tree / "services").is_dir():
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(tree), sha], cwd=ROOT, check=True)
    return tree


def one_run(tree: Path, extra: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), **extra}
    done = subprocess.run([sys.executable, "-c", _ONE_RUN], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"classifier run in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run() -> list[Figure]:
    base = base_tree(BASE)
    if base is None:
        print(f"skipped: commit {BASE} is not in this clone (a shallow one?)", flush=True)
        return []
    load_at_start = os.getloadavg()
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with running("scripts/kafka.sh", "scripts/triton.sh"):
        for number in range(ROUNDS):
            for side, extra in SIDES.items():
                rounds[side].append(one_run(base if side == "base" else ROOT, extra))
            print(f"round {number + 1}: " + ", ".join(_row(side, rounds[side][-1]) for side in SIDES), flush=True)
    cpu = {side: statistics.median(r["cpu"]["classifier"] for r in runs) for side, runs in rounds.items()}
    rate = {side: round(statistics.median(r["rate"] for r in runs)) for side, runs in rounds.items()}
    context = {
        "base": BASE, "rounds": ROUNDS, "images": IMAGES, "model": "noop", "pixels": "raw",
        "classifier_cpu_ms_per_image": cpu, "images_per_s": rate,
        "cpu_ms_per_image_rounds": {side: [r["cpu"]["classifier"] for r in runs] for side, runs in rounds.items()},
        "load": machine_load(load_at_start),
    }  # fmt: skip
    return [
        Figure(
            f"classifier_cpu_vs_base_{guarantee}",
            round(cpu[guarantee] / cpu["base"], 3),
            "ratio",
            "<= 1",
            context | {"what": f"classifier CPU per image under {guarantee}, ÷ the base commit's; medians"},
        )
        for guarantee in ("exactly_once", "at_least_once")
    ]


def _row(side: str, result: dict[str, Any]) -> str:
    return f"{side} {result['cpu']['classifier']:.3f} ms/image ({result['rate']:.0f}/s)"
