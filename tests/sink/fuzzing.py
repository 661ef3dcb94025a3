"""How many examples the sink's property tests try, and how they are drawn.

`make test`: the count a test asks for, derandomized, so every run tries the same examples.
Under the hypothesis profile `fuzz` (`HYPOTHESIS_PROFILE=fuzz`, `make fuzz`): the profile's
count, drawn afresh each run. Either way a failure prints the falsifying example and a
`@reproduce_failure` blob that replays it.
"""

from __future__ import annotations

import os
from typing import Any

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"


def budget(examples: int) -> dict[str, Any]:
    return {"print_blob": True} | ({} if FUZZING else {"max_examples": examples, "derandomize": True})
