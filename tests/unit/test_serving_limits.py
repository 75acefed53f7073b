"""The router's token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from serving.limits import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bursts_up_to_the_bucket_then_refuses_until_tokens_return() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=5.0, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.retry_after_s() == pytest.approx(0.1)
    clock.now = 0.1
    assert bucket.take() and not bucket.take()


def test_long_run_rate_is_the_configured_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50.0, burst=10.0, clock=clock)
    admitted = 0
    for step in range(10_000):  # 10 s of a 1000 requests/s flood
        clock.now = step / 1000
        admitted += bucket.take()
    assert admitted == pytest.approx(50 * 10 + 10, abs=2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0, burst=5)
