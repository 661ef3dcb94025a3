"""`python -m services.common.topics`: create the pipeline's topics that do not exist yet."""

from __future__ import annotations

import json

from .kafka import ensure_topics
from .settings import KafkaSettings


def main() -> None:
    created = ensure_topics(KafkaSettings())
    print(json.dumps({"created_topics": created}))


if __name__ == "__main__":
    main()
