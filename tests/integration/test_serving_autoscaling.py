"""Autoscaling sees the load that arrives over stream lanes, on a real Ray Serve.

Routers call models over stream lanes, which Serve's own request counting never sees: with
Serve's default policy this load leaves the student at one replica (checked by hand while
building serving/autoscaling.py). Here the student is slow (0.3 s a call) and asked by 8 clients
at once with a target of 1 ongoing request per replica, so it must grow to its maximum of 2.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serving.config import Autoscaling, Resources

Deploy = Any  # tests/integration/conftest.py
CLIENTS = 8


def _student_replicas(app: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments["student"].replica_states
    return sum(count for state, count in states.items() if state == "RUNNING")  # str enum, or str once serialized


def test_stream_lane_load_scales_the_student_up(deploy: Deploy) -> None:
    scaling = Autoscaling(min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=1)
    student = Resources(num_cpus=0.25, autoscaling=scaling)
    with deploy("scaling", weight=1.0, student=student, student_chaos_delay_s=0.3) as client:
        stop = threading.Event()

        def keep_asking(_: int) -> int:
            by_student = 0
            while not stop.is_set():
                response = client.post("/v1/predict", json={"inputs": ["a fine, warm film"]})
                assert response.status_code == 200, response.text
                by_student += response.json()["variant"] == "student"
            return by_student

        with ThreadPoolExecutor(CLIENTS) as pool:
            answered = pool.map(keep_asking, range(CLIENTS))
            try:
                deadline = time.monotonic() + 60
                while _student_replicas("scaling") < 2 and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:  # whatever happens here, the clients must stop or the pool never closes
                stop.set()
            assert sum(answered) > 0
        assert _student_replicas("scaling") == 2, "load over the stream lanes did not reach Serve's autoscaler"
