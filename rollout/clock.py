"""Time, injected: the controller reads `clock.now()`; the policy only ever receives `now`.

`SystemClock` is wall-clock time (`time.time()`), not a monotonic clock, on purpose: the
status persists timestamps (`stage_started_at`, `last_transition_at`) that a restarted
controller, in another process, must compare with its own `now`. `FakeClock` moves only when a
test calls `advance`, so a scenario is a list of (advance, record, tick) steps with no sleeping.
(Rich's `Console(get_time=...)`, Ray's `TimerBase` / `MockTimer`.)
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of the current time in seconds since the epoch."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock: wall-clock seconds, comparable across processes and restarts."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock for tests: starts at `start` and moves only on `advance` (thread-safe)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward: advance({seconds}) is negative")
        with self._lock:
            self._now += seconds
            return self._now
