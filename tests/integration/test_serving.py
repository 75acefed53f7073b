"""Serving end to end on a real Ray Serve: real ONNX Runtime, real bundles from the tiny recipe.

Three applications share one Ray session, each a fixed share pinned on the rollout controller
(a spec that judges nothing): `kd` (weight changed through the admin API, two router replicas),
`shadow` (weight 0, every request mirrored to the student) and `faulty` (weight 1, the student
raises on every call).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from rollout_admin import ADMIN_TOKEN, AUTH, admin_client, evidence, pin_weight

from rollout.events import EvidenceSummary
from serving.metrics import scrape
from serving.router import VERSION_HEADER
from serving.routing import sticky_variant

Bundles = Any  # tests/integration/conftest.py: registry, teacher_id, student_id
ServeCluster = Any  # tests/integration/conftest.py: http_url, metrics_url, admin_token
Deploy = Any  # tests/integration/conftest.py: deploy(name, **app_args) -> context of an httpx.Client
TEXTS = ["a moving, beautifully acted film", "dull, lifeless and far too long", "it was fine i guess"]


@pytest.fixture(scope="module")
def kd(serve_cluster: ServeCluster, deploy: Deploy) -> Iterator[httpx.Client]:
    assert serve_cluster.admin_token == ADMIN_TOKEN
    with deploy("kd", weight=0.0, routers=2) as client:
        yield client


@pytest.fixture(scope="module")
def shadow(deploy: Deploy) -> Iterator[httpx.Client]:
    """Weight 0, every request also asked of the student; its teacher runs on torch (the FP32
    bundle's own weights), so its answers also show torch serving matching kd's ONNX teacher."""
    with deploy("shadow", weight=0.0, shadow=1.0, teacher_runtime="torch") as client:
        yield client


@pytest.fixture(scope="module")
def faulty(deploy: Deploy) -> Iterator[httpx.Client]:
    with deploy("faulty", weight=1.0, student_chaos_error_rate=1.0) as client:
        yield client


def predict(client: httpx.Client, texts: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    headers = extra.pop("headers", None)
    response = client.post("/v1/predict", json={"inputs": texts or TEXTS[:1], **extra}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body["_version"] = int(response.headers[VERSION_HEADER])
    return body


def set_weight(client: httpx.Client, weight: float) -> None:
    """Pin the weight through the admin client and wait for the routers to apply it."""
    with admin_client(client) as admin:
        pin_weight(client, admin, weight)


def many(client: httpx.Client, count: int, workers: int = 8, **extra: Any) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: predict(client, **extra), range(count)))


def test_predict_answers_with_the_contract(kd: httpx.Client, serving_bundles: Bundles) -> None:
    body = predict(kd, TEXTS)
    assert set(body) == {"predictions", "variant", "model_id", "request_id", "_version"}
    assert (body["variant"], body["model_id"]) == ("teacher", serving_bundles.teacher_id)  # weight 0
    assert len(body["predictions"]) == len(TEXTS)
    for p in body["predictions"]:
        assert set(p) == {"label", "label_id", "probabilities"}
        assert math.isclose(sum(p["probabilities"]), 1.0, abs_tol=1e-4)
        assert p["label_id"] == max(range(2), key=p["probabilities"].__getitem__)
        assert p["label"] in ("negative", "positive")
    assert predict(kd)["request_id"] != body["request_id"]


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"inputs": []}, 422, "inputs"),
        ({"inputs": ["x"] * 65}, 422, "inputs"),
        ({"inputs": ["x" * 2001]}, 422, "inputs.0"),
        ({"inputs": ["ok", ""]}, 422, "inputs.1"),
        ({"inputs": [3]}, 422, "inputs.0"),
        ({"inputs": "not a list"}, 422, "inputs"),
        ({"text": ["x"]}, 422, "inputs"),
        ({"inputs": ["x"], "routing_key": "k" * 257}, 422, "routing_key"),
        ({"inputs": ["x"], "extra": 1}, 422, "extra"),
    ],
)
def test_bad_inputs_get_4xx_naming_the_field(kd: httpx.Client, payload: Any, status: int, field: str) -> None:
    response = kd.post("/v1/predict", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert response.json()["detail"].startswith(f"{field}:")


def test_malformed_requests_get_4xx(kd: httpx.Client) -> None:
    assert kd.post("/v1/predict", content=b"{not json").status_code == 422
    assert kd.post("/v1/predict", content=b"").status_code == 422
    big = kd.post("/v1/predict", content=b'{"inputs": ["' + b"x" * 300_000 + b'"]}')
    assert big.status_code == 413 and big.json()["field"] == "body"
    header = kd.post("/v1/predict", json={"inputs": ["x"]}, headers={"X-Routing-Key": "k" * 300})
    assert header.status_code == 422 and header.json()["field"] == "X-Routing-Key"
    assert kd.get("/v1/predict").status_code == 405
    assert kd.post("/v2/nothing", json={}).status_code == 404


def test_admin_refuses_missing_or_wrong_token(kd: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        assert kd.get("/admin/rollout", headers=headers).status_code == 401
        put = kd.put("/admin/rollout/weight", json={"weight": 1.0, "reason": "x"}, headers=headers)
        assert put.status_code == 401 and ADMIN_TOKEN not in put.text
    with admin_client(kd) as admin:
        assert admin.status().routing.weight == 0.0
    bad = kd.put("/admin/rollout/weight", json={"weight": 1.5, "reason": "x"}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["field"] == "weight"
    assert kd.put("/admin/rollout/weight", json={"weight": 0.5}, headers=AUTH).json()["field"] == "reason"


def test_weight_change_through_admin_reaches_every_router(kd: httpx.Client) -> None:
    set_weight(kd, 1.0)
    assert {body["variant"] for body in many(kd, 40)} == {"student"}
    with admin_client(kd) as admin:
        assert admin.status().routing.weight == 1.0
    set_weight(kd, 0.0)
    assert {body["variant"] for body in many(kd, 40)} == {"teacher"}


def test_routing_share_matches_weight(kd: httpx.Client) -> None:
    weight, n = 0.3, 400
    set_weight(kd, weight)
    students = sum(body["variant"] == "student" for body in many(kd, n))
    sigma = math.sqrt(n * weight * (1 - weight))
    assert abs(students - n * weight) <= 4 * sigma, f"{students}/{n} on the student at weight {weight}"


def test_sticky_routing_is_stable_and_monotone(kd: httpx.Client) -> None:
    keys = [f"user-{i}" for i in range(40)]
    set_weight(kd, 0.3)
    low = {key: predict(kd, routing_key=key)["variant"] for key in keys}
    again = {key: predict(kd, headers={"X-Routing-Key": key})["variant"] for key in keys}
    assert low == again == {key: sticky_variant(key, 0.3).value for key in keys}
    assert set(low.values()) == {"teacher", "student"}
    set_weight(kd, 0.7)
    high = {key: predict(kd, routing_key=key)["variant"] for key in keys}
    assert all(high[key] == "student" for key in keys if low[key] == "student")  # only teacher -> student
    assert sum(v == "student" for v in high.values()) > sum(v == "student" for v in low.values())
    set_weight(kd, 0.0)


def test_failover_to_teacher_when_student_raises(faulty: httpx.Client, serving_bundles: Bundles) -> None:
    bodies = many(faulty, 20, workers=4)
    assert {(b["variant"], b["model_id"]) for b in bodies} == {("teacher", serving_bundles.teacher_id)}
    counts = _wait_for_evidence(faulty, lambda e: e.student_errors >= 20)
    assert counts.teacher_requests >= 20


def test_shadow_does_not_change_the_answer(kd: httpx.Client, shadow: httpx.Client) -> None:
    plain = predict(kd, TEXTS)
    mirrored = [predict(shadow, TEXTS) for _ in range(10)]
    for body in mirrored:
        assert (
            (body["variant"], body["model_id"])
            == (plain["variant"], plain["model_id"])
            == (
                "teacher",
                plain["model_id"],
            )
        )
        for got, want in zip(body["predictions"], plain["predictions"], strict=True):
            assert got["label_id"] == want["label_id"]
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
    counts = _wait_for_evidence(shadow, lambda e: e.agreement_compared >= 10)
    assert counts.student_requests >= 10


def test_custom_metrics_reach_rays_metrics_endpoint(
    kd: httpx.Client, shadow: httpx.Client, faulty: httpx.Client, serve_cluster: ServeCluster
) -> None:
    predict(kd), predict(shadow), predict(faulty)
    assert kd.post("/v1/predict", content=b"{not json").status_code == 422  # its own rejection, whatever ran before
    for _ in range(20):
        predict(kd)
    wanted = {
        "ray_kdcanary_requests_total",
        "ray_kdcanary_request_latency_seconds_bucket",
        "ray_kdcanary_failovers_total",
        "ray_kdcanary_shadow_comparisons_total",
        "ray_kdcanary_shadow_agreements_total",
        "ray_kdcanary_shadow_divergence_bucket",
        "ray_kdcanary_student_weight",
        "ray_kdcanary_model_compute_seconds_total",
        "ray_kdcanary_cost_dollars_total",
        "ray_kdcanary_rejected_requests_total",
        "ray_kdcanary_model_calls_total",
    }
    deadline = time.monotonic() + 60
    while True:
        samples = _scrape(serve_cluster.metrics_url, {"kd", "shadow", "faulty"})  # the session's other apps aside
        if wanted <= set(samples) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert wanted <= set(samples), f"missing: {sorted(wanted - set(samples))}"
    variants = {labels.get("variant") for labels, _ in samples["ray_kdcanary_cost_dollars_total"]}
    assert {"teacher", "student"} <= variants  # the student's cost includes its shadow work
    assert all(value > 0 for _, value in samples["ray_kdcanary_cost_dollars_total"])
    reasons = {labels["reason"] for labels, _ in samples["ray_kdcanary_failovers_total"]}
    assert "error" in reasons
    by_transport: dict[str, float] = {}
    for labels, value in samples["ray_kdcanary_model_calls_total"]:
        by_transport[labels["transport"]] = by_transport.get(labels["transport"], 0.0) + value
    assert by_transport.get("stream", 0) >= 10, f"routers should call models over the stream lane: {by_transport}"
    for labels, _ in samples["ray_kdcanary_requests_total"]:
        assert labels["outcome"] in ("ok", "failover") and labels["variant"] in ("teacher", "student")


def _scrape(url: str, applications: set[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for sample in scrape(url):
        if sample.labels.get("application") in applications:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _wait_for_evidence(client: httpx.Client, done: Any, within_s: float = 60.0) -> EvidenceSummary:
    """The controller's evidence counts once `done(counts)` holds (routers report in batches)."""
    deadline = time.monotonic() + within_s
    while not done(counts := evidence(client)):
        assert time.monotonic() < deadline, f"controller evidence never got there: {counts}"
        time.sleep(0.3)
    return counts
