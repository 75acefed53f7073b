"""Where a running recipe says how far each student got: its stage and its step.

Training loops and stages report here; in one process a terminal shows tqdm bars, and output
that is not a terminal (a log, CI) gets `lines`; a student's chain running as a Ray task
(compression/fanout.py) installs a reporter that forwards to the driver, which prints one line
per student as it moves. Reports are throttled by the reporter, not here: a step costs one
function call when nobody listens.
"""

from __future__ import annotations

import time
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


def throttled(send: Reporter, every_s: float) -> Reporter:
    """`send` every change of stage or loop and every loop's last step; other steps at most
    once every `every_s` seconds."""
    shown, shown_at = "", 0.0

    def report(what: str, step: int, total: int) -> None:
        nonlocal shown, shown_at
        now = time.monotonic()
        if what != shown or now - shown_at >= every_s or step == total:
            shown, shown_at = what, now
            send(what, step, total)

    return report


def lines(echo: Callable[[str], None], every_s: float = 30.0) -> Reporter:
    """One line per report that gets through `throttled`: progress where tqdm's bars, which draw
    only on a terminal, show nothing."""
    return throttled(lambda what, step, total: echo(f"  {what}" + (f" {step}/{total}" if total else "")), every_s)
