"""How long to wait before reconnecting to the stream, as X asks clients to back off.

- network errors (and stalls, and connections the server closed): linear, one step more per
  attempt (X: 250 ms), up to a cap (X: 16 s);
- HTTP errors: exponential from a start (X: 5 s), doubling, up to a cap (X: 320 s);
- 429 Too Many Requests: until the `x-rate-limit-reset` time when X sends one, else
  exponential from a start (X: 1 minute).

Every schedule starts over once a connection delivers something.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    network_step_s: float = 0.25
    network_max_s: float = 16.0
    http_start_s: float = 5.0
    http_max_s: float = 320.0
    rate_limit_start_s: float = 60.0
    rate_limit_max_s: float = 900.0


class Backoff:
    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._network_attempts = 0
        self._http_attempts = 0
        self._rate_limit_attempts = 0

    def reset(self) -> None:
        """The connection works: the next failure starts each schedule from its beginning."""
        self._network_attempts = self._http_attempts = self._rate_limit_attempts = 0

    def after_network_error(self) -> float:
        self._network_attempts += 1
        return min(self.policy.network_step_s * self._network_attempts, self.policy.network_max_s)

    def after_http_error(self) -> float:
        wait = _doubling(self.policy.http_start_s, self._http_attempts, self.policy.http_max_s)
        self._http_attempts += 1
        return wait

    def after_rate_limit(self, reset_epoch_s: float | None, now_epoch_s: float) -> float:
        """Until the window resets when X says when (at least one network step, capped), else exponentially."""
        if reset_epoch_s is not None:
            self._rate_limit_attempts += 1
            until_reset = max(reset_epoch_s - now_epoch_s, self.policy.network_step_s)
            return min(until_reset, self.policy.rate_limit_max_s)
        wait = _doubling(self.policy.rate_limit_start_s, self._rate_limit_attempts, self.policy.rate_limit_max_s)
        self._rate_limit_attempts += 1
        return wait


def _doubling(start: float, attempts: int, cap: float) -> float:
    # 2**attempts overflows nothing here: the cap is reached long before attempts gets large.
    return min(start * float(2 ** min(attempts, 32)), cap)


def parse_reset_header(value: str | None) -> float | None:
    """`x-rate-limit-reset` is the epoch second the window resets; None when absent or unreadable."""
    if value is None:
        return None
    try:
        return float(int(value.strip()))
    except ValueError:
        return None
