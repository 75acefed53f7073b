"""Failover on a student *timeout*, on a real Ray Serve with real bundles.

The student of the `slow` application sleeps `chaos_delay_s` (far past the router's
`student_timeout_s`) before every answer, at weight 1: each request must still get a normal 200
from the teacher, and the router must count each failover as a timeout. Each answer must be the
request's own, also when the router joined concurrent requests into one teacher call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from rollout_admin import SETTLE, evidence

from serving.config import RouterConfig
from serving.metrics import scrape

Bundles = Any  # tests/integration/conftest.py: registry, teacher_id, student_id
ServeCluster = Any  # tests/integration/conftest.py: http_url, metrics_url, admin_token
Deploy = Any  # tests/integration/conftest.py: deploy(name, **app_args) -> context of an httpx.Client
APP = "slow"
STUDENT_TIMEOUT_S = 0.3
STUDENT_DELAY_S = 5.0  # an order of magnitude past the timeout: no request can sneak in under it
TEXTS = [  # distinct inputs, one or two per request
    ["a moving, beautifully acted film"],
    ["dull, lifeless and far too long", "it was fine i guess"],
    ["the best thing i have seen all year"],
    ["a tedious mess"],
    ["charming, funny and warm", "flat"],
    ["i walked out halfway through"],
]
REQUESTS = 2 * len(TEXTS)  # each asked concurrently, then alone


@pytest.fixture(scope="module")
def slow(deploy: Deploy) -> Iterator[httpx.Client]:
    """Weight 1 pinned, a student slower than its timeout."""
    settings = RouterConfig(student_timeout_s=STUDENT_TIMEOUT_S, poll_interval_s=0.2, flush_interval_s=0.2)
    with deploy(APP, weight=1.0, student_chaos_delay_s=STUDENT_DELAY_S, router_settings=settings) as client:
        yield client


def test_student_timeout_fails_over_to_the_teacher(
    slow: httpx.Client, serve_cluster: ServeCluster, serving_bundles: Bundles
) -> None:
    def predict(texts: list[str]) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        response = slow.post("/v1/predict", json={"inputs": texts})
        assert response.status_code == 200, response.text
        return response.json(), time.monotonic() - started

    with ThreadPoolExecutor(3) as pool:  # concurrent: the router may join their model calls
        answers = list(pool.map(predict, TEXTS))
    for texts, (body, took) in zip(TEXTS, answers, strict=True):
        # the teacher's answer, so the router did not wait for the student's; and not before the timeout
        assert (body["variant"], body["model_id"]) == ("teacher", serving_bundles.teacher_id)
        assert took >= STUDENT_TIMEOUT_S
        alone = predict(texts)[0]  # each request gets its own slice of a joined answer
        assert len(body["predictions"]) == len(texts)
        for got, want in zip(body["predictions"], alone["predictions"], strict=True):
            assert got["label_id"] == want["label_id"]
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
    # Pinning the weight already asked SETTLE requests of routers at weight 1: each timed out too.
    timed_out = REQUESTS + SETTLE
    counts = _wait_for(lambda: evidence(slow), lambda e: e.student_errors >= timed_out)
    assert counts.teacher_requests >= timed_out
    timeouts = _wait_for(lambda: _failovers(serve_cluster.metrics_url), lambda n: n >= timed_out)
    assert timeouts >= timed_out


def _failovers(metrics_url: str) -> float:
    """Timeout failovers this application's routers counted, as Prometheus would scrape them."""
    total = 0.0
    for sample in scrape(metrics_url, prefix="ray_kdcanary_failovers_total"):
        if sample.labels.get("application") == APP and sample.labels.get("reason") == "timeout":
            total += sample.value
    return total


def _wait_for(read: Any, done: Any, within_s: float = 60.0) -> Any:
    """Poll `read()` until `done(value)`: routers report and Ray exports on their own schedules."""
    deadline = time.monotonic() + within_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), f"never got there: {value}"
            return value
        time.sleep(0.3)
