"""`make chaos [KILLS=20] [BROKERS=3] [SEED=n]`: the chaos run at length, and its summary table.

With BROKERS=3 the run's own cluster has three KRaft nodes, replication factor 3 and
min.insync.replicas 2, as deploy/k8s has, and its nodes are hard-killed one at a time.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from .harness import Plan, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 of each stage")
    parser.add_argument("--brokers", type=int, default=1, help="nodes of the run's Kafka cluster (1 or 3)")
    parser.add_argument("--seed", type=int, help="repeat a run's schedule of failures")
    parser.add_argument("--duration", type=float, help="seconds of replay (default: room for every failure)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, data)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    broker_kills = 1 if args.brokers == 1 else 2 * args.brokers
    duration = args.duration or max(90.0, 3.0 * (3 * args.kills + broker_kills + 1) + 15 * broker_kills)
    plan = Plan(seed=seed, duration_s=duration, kills=args.kills, brokers=args.brokers, broker_kills=broker_kills)
    print(
        f"chaos: seed {seed}, {args.kills} kills per stage, {args.brokers} broker node(s), {duration:.0f} s of replay"
    )
    work = Path(tempfile.mkdtemp(prefix="tagstream-chaos-"))
    report = run(plan, work)
    print(report.table())
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem} (seed {seed})")
    if args.keep or problems:
        print(f"logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
