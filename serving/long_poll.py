"""A request held until its answer changes: how routers learn the controller's routing.

A router asks with the routing it last received; the controller answers as soon as its own
differs, and otherwise after `wait_s` with the same one. A change (a rollback, a new stage, a
pinned weight) so reaches every router at once instead of at its next poll, and an idle router
asks about once every `wait_s` instead of several times a second: each call over a Serve handle
costs both processes about a millisecond of CPU, while re-reading the routing in the
controller's own process costs microseconds. No Ray here: the controller's deployment passes
its `routing` method.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CHECK_EVERY_S = 0.1
"""How often a held request re-reads the current value: the most a change waits to be answered."""


async def changed(read: Callable[[], T], known: T | None, wait_s: float, check_every_s: float = CHECK_EVERY_S) -> T:
    """`read()` as soon as it differs from `known` (at once when it already does, or when
    `known` is None), else the unchanged value once `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    current = read()
    while known is not None and current == known and time.monotonic() < deadline:
        await asyncio.sleep(min(check_every_s, max(0.0, deadline - time.monotonic())))
        current = read()
    return current
