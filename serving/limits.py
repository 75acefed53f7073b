"""Admission control for the router: a token bucket per router replica.

Each replica admits at most `rate` requests per second on average, with bursts up to
`burst`; past that a request gets 429 at once (with Retry-After) instead of queueing behind
the models. It protects the models and the controller's evidence from a flood, not a user
from another: per-user quotas belong in front of the cluster (an API gateway).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1; got rate={rate}, burst={burst}")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def take(self) -> bool:
        """Admit one request (True) or refuse it (False); never blocks."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after_s(self) -> float:
        """Seconds until one token is back."""
        return max(0.0, (1.0 - self._tokens) / self.rate)
