"""serving/long_poll.py: a held request answers at once on a change, else after its wait."""

from __future__ import annotations

import asyncio

from serving import long_poll


def test_a_value_already_different_or_unknown_is_answered_at_once() -> None:
    reads = iter([2, 2])
    assert asyncio.run(long_poll.changed(lambda: next(reads), known=1, wait_s=60.0)) == 2
    assert asyncio.run(long_poll.changed(lambda: 7, known=None, wait_s=60.0)) == 7


def test_a_change_while_held_is_answered_at_the_next_read() -> None:
    values = iter([1, 1, 2, 3])  # the value changes at the third read
    reads = 0

    def read() -> int:
        nonlocal reads
        reads += 1
        return next(values)

    # held (read again) and answered at the read that saw the change, not at the end of the wait
    assert asyncio.run(long_poll.changed(read, known=1, wait_s=60.0, check_every_s=0.0)) == 2 and reads == 3


def test_an_unchanged_value_is_answered_when_the_wait_ends() -> None:
    assert asyncio.run(long_poll.changed(lambda: 1, known=1, wait_s=0.05, check_every_s=0.01)) == 1
