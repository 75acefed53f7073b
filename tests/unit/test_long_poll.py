"""serving/long_poll.py: a held request answers at once on a change, else after its wait."""

from __future__ import annotations

import asyncio

from serving import long_poll


def test_a_value_already_different_or_unknown_is_answered_at_once() -> None:
    reads = iter([2, 2])
    assert asyncio.run(long_poll.changed(lambda: next(reads), known=1, wait_s=60.0)) == 2
    assert asyncio.run(long_poll.changed(lambda: 7, known=None, wait_s=60.0)) == 7


def test_a_change_while_held_is_answered_before_the_wait_ends() -> None:
    async def held() -> tuple[int, int]:
        value = [1]
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, value.__setitem__, 0, 2)
        reads = 0

        def read() -> int:
            nonlocal reads
            reads += 1
            return value[0]

        return await long_poll.changed(read, known=1, wait_s=60.0, check_every_s=0.01), reads

    answer, reads = asyncio.run(held())
    assert answer == 2 and reads >= 2  # held (read more than once), answered long before 60 s


def test_an_unchanged_value_is_answered_when_the_wait_ends() -> None:
    assert asyncio.run(long_poll.changed(lambda: 1, known=1, wait_s=0.05, check_every_s=0.01)) == 1
