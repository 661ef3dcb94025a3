"""Hypothesis profiles for the property tests (marker `fuzz`).

`test` (the default, in `make test`): a modest number of examples, the same ones every run
(derandomized), so the suite stays fast and a failure is reproducible as is. `fuzz`
(`HYPOTHESIS_PROFILE=fuzz`, what `make fuzz` sets): many more examples, random each run from
the seed `make fuzz` prints. Tests leave `max_examples` to the profile. No example database is
written: a failure prints the example and how to reproduce it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

TEST_EXAMPLES = 60
FUZZ_EXAMPLES = 2000

settings.register_profile(
    "test",
    max_examples=TEST_EXAMPLES,
    derandomize=True,
    deadline=None,  # decodes on a busy shared machine: a time limit per example would be flaky
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "test"))
