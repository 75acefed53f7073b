"""The admin token stays secret and the predict route cannot steer a rollout.

After real admin traffic (right and wrong tokens), the token must appear nowhere a person or
a scraper can read: Ray's log files, the metrics endpoint, the event log, error answers and
the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_admin import ADMIN_TOKEN, AUTH, admin_client

Deploy = Any  # tests/integration/conftest.py


@pytest.fixture(scope="module")
def app(deploy: Deploy, no_gates: dict[str, Any]) -> Iterator[httpx.Client]:
    with deploy("secure", rollout=no_gates) as client:
        yield client


def test_the_token_never_leaves_the_auth_check(app: httpx.Client, serve_cluster: Any) -> None:
    import ray

    seen = [app.post("/admin/rollout/start", json={"reason": "security test"}, headers=AUTH).text]
    seen += [app.get("/admin/rollout", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}).text]
    seen += [app.put("/admin/rollout/weight", json={"weight": 2, "reason": "x"}, headers=AUTH).text]
    seen += [app.get("/admin/rollout/events", headers=AUTH).text, app.get("/openapi.json").text]
    seen += [httpx.get(serve_cluster.metrics_url, timeout=10).text]
    leaks = [text[:200] for text in seen if ADMIN_TOKEN in text]
    assert not leaks
    node: Any = ray._private.worker._global_node  # no public accessor for the session folder
    logs = Path(node.get_session_dir_path()) / "logs"
    leaked_files = [p.name for p in logs.rglob("*") if p.is_file() and ADMIN_TOKEN.encode() in p.read_bytes()]
    assert not leaked_files


def test_predict_cannot_steer_the_rollout(app: httpx.Client) -> None:
    with admin_client(app) as admin:
        before = admin.status()
    for extra in ({"variant": "student"}, {"weight": 1.0}, {"admin": True}):
        assert app.post("/v1/predict", json={"inputs": ["x"], **extra}).status_code == 422
    forcing = {"x-kdcanary-variant": "student", "authorization": f"Bearer {ADMIN_TOKEN}"}  # not the force token
    refused = app.post("/v1/predict", json={"inputs": ["x"]}, headers=forcing)
    assert refused.status_code == 401 and "force token" in refused.json()["detail"]
    steering = {"x-variant": "student", "x-kdcanary-weight": "1", "authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = [app.post("/v1/predict", json={"inputs": ["x"]}, headers=steering).json() for _ in range(20)]
    assert {a["variant"] for a in answers} == {"teacher"}  # stage 0: every user is on the teacher
    assert all(set(a) == {"predictions", "variant", "model_id", "request_id"} for a in answers)
    with admin_client(app) as admin:
        after = admin.status()
    assert (after.phase, after.weight, after.epoch) == (before.phase, before.weight, before.epoch)
