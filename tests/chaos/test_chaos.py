"""Nothing lost, nothing duplicated: the pipeline under kill -9, a broker kill and a Triton
outage, counted by read_committed readers (tests/chaos/harness.py).

The seed is printed, and given again on failure: `CHAOS_SEED=<seed> make test` repeats the
same schedule of failures.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from .harness import Plan, run

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_every_image_exactly_once_through_kills_a_broker_restart_and_a_triton_outage(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"chaos seed {seed}")
    report = run(Plan(seed=seed), tmp_path)
    print(report.table())
    where = f"(seed {seed}; CHAOS_SEED={seed} repeats it; logs in {report.logs})"
    assert len(report.expected) >= 200, where
    assert not report.problems(), f"{report.problems()} {where}"
    assert sum(report.predicted.values()) > 0, where
    # A stage that ended by itself was started again, as Kubernetes would, and counted; one that
    # exited on its own code path (not a signal, such as librdkafka aborting) is a bug of ours,
    # unless it ended on purpose because a library call never returned (Exit.planned).
    ours = {name: [e for e in exits if e.code >= 0 and not e.planned] for name, exits in report.exits.items()}
    assert not any(ours.values()), f"stages exited by themselves: {ours} {where}"
    assert len(report.kills) == 3 * 3 + 2, where
