"""Load shapes for replays: a steady rate with a burst, and the priority mix of the posts sent.

`make replay FILE=... RATE=10 BURST=3 BURST_START=30 BURST_SECONDS=60 DURATION=150 HIGH_SHARE=0.2`
sends 10 posts/s, 30 posts/s from the 30th to the 90th second (the "music festival"
spike), then 10 posts/s again until 150 s; 20 % of the posts are high priority. The
file's posts are cycled, each sent copy with a fresh tweet id, so any file can drive any
load.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: the rule tags a shaped replay gives its posts; their classes map to priorities 2 and 1 by default
HIGH_RULE = {"id": "load-high", "tag": "targeted:load"}
LOW_RULE = {"id": "load-low", "tag": "sample"}


@dataclass(frozen=True)
class LoadShape:
    rate: float
    duration_s: float
    burst_factor: float = 1.0
    burst_start_s: float = 0.0
    burst_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0 or self.burst_factor <= 0:
            raise ValueError("rate, duration and burst factor must be positive")

    def in_burst(self, t: float) -> bool:
        return self.burst_start_s <= t < self.burst_start_s + self.burst_seconds

    def rate_at(self, t: float) -> float:
        return self.rate * self.burst_factor if self.in_burst(t) else self.rate

    def send_times(self) -> Iterator[float]:
        """Seconds after the start at which each post is sent, evenly spaced in each segment."""
        burst_end = self.burst_start_s + self.burst_seconds
        edges = sorted(
            {0.0, min(self.burst_start_s, self.duration_s), min(burst_end, self.duration_s), self.duration_s}
        )
        for start, end in itertools.pairwise(edges):
            rate = self.rate_at(start)
            count = math.ceil((end - start) * rate - 1e-9)
            for k in range(count):
                yield start + k / rate


@dataclass
class Throttle:
    """The seed project's load shedding: at most `limit` posts per fixed `window_s` window."""

    limit: int
    window_s: float
    _window: int = field(default=-1, init=False)
    _sent: int = field(default=0, init=False)

    def admit(self, t: float) -> bool:
        window = int(t // self.window_s)
        if window != self._window:
            self._window, self._sent = window, 0
        if self._sent >= self.limit:
            return False
        self._sent += 1
        return True

    @classmethod
    def parse(cls, text: str) -> Throttle:
        """`128/8`: 128 posts per 8 seconds."""
        limit, _, window = text.partition("/")
        return cls(int(limit), float(window))


def shaped_payloads(
    payloads: list[dict[str, Any]], count: int, high_share: float, id_base: int, seed: int = 0
) -> Iterator[tuple[dict[str, Any], bool]]:
    """`count` posts cycled from `payloads`, each with a fresh id and a high or low rule.

    Yields (payload, is_high). Media keys get a suffix and image URLs a `copy=<id>` query
    parameter, so every image is a distinct image downstream too, fetched and decoded anew.
    """
    posts = [p for p in payloads if isinstance(p.get("data"), dict)]
    if not posts:
        raise ValueError("no posts to replay")
    rng = random.Random(seed)  # noqa: S311 - a reproducible mix, not a secret
    for n in range(count):
        payload = copy.deepcopy(posts[n % len(posts)])
        tweet_id = str(id_base + n)
        payload["data"]["id"] = tweet_id
        keys = payload["data"].get("attachments", {}).get("media_keys", [])
        renamed = {key: f"{key}_{n}" for key in keys}
        if keys:
            payload["data"]["attachments"]["media_keys"] = [renamed[k] for k in keys]
        for media in payload.get("includes", {}).get("media", []):
            media["media_key"] = renamed.get(media.get("media_key"), media.get("media_key"))
            for name in ("url", "preview_image_url"):  # a new image to the fetcher, not a repost
                if isinstance(media.get(name), str):
                    media[name] += ("&" if "?" in media[name] else "?") + f"copy={tweet_id}"
        high = rng.random() < high_share
        payload["matching_rules"] = [dict(HIGH_RULE if high else LOW_RULE)]
        yield payload, high
