"""Where a running recipe says how far each student got: its stage and its step.

Training loops and stages report here; in one process a terminal shows tqdm bars (and nothing
else is needed), while a student's chain running as a Ray task (compression/fanout.py) installs a
reporter that forwards to the driver, which prints one line per student as it moves. Reports are
throttled by the reporter, not here: a step costs one function call when nobody listens.
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[str, int, int], None]  # (what: stage or loop, step, total steps)

_reporter: Reporter | None = None


def listen(reporter: Reporter | None) -> None:
    """Send this process's reports to `reporter` (None: stop)."""
    global _reporter
    _reporter = reporter


def report(what: str, step: int = 0, total: int = 0) -> None:
    if _reporter is not None:
        _reporter(what, step, total)
