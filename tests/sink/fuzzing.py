"""How many examples the sink's property tests try (the profiles are in tests/conftest.py).

`make test` (profile `test`, derandomized): the count a test asks for, more than the
profile's default where a test needs them to reach its cases, the same examples every run.
`make fuzz` (profile `fuzz`): the profile's count, from the seed `make fuzz` prints.
"""

from __future__ import annotations

import os
from typing import Any

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"


def budget(examples: int) -> dict[str, Any]:
    return {} if FUZZING else {"max_examples": examples}
