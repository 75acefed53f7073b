"""Hostile and malformed input against a real router: fuzzed bodies on every route, byte-level
garbage, and bundles broken on disk.

Properties: the router never answers 5xx to anything a client sends, never restarts a replica,
and rejected requests leave no trace in the controller's evidence. Hypothesis generates the
bodies (JSON values shaped like the real ones and unlike them); a fixed list covers what JSON
cannot say (invalid UTF-8, NaN, huge bodies).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_admin import AUTH

from serving.classifier import load_bundle
from serving.errors import BundleRejectedError

Deploy = Any  # tests/integration/conftest.py
CASES = 600  # per route family; two families -> more than a thousand requests per run

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
texts = st.text(max_size=3000)
predict_bodies = (
    st.fixed_dictionaries(
        {"inputs": st.lists(texts, max_size=80) | json_values},
        optional={"routing_key": st.text(max_size=300) | json_values, "extra": json_values},
    )
    | json_values
)
admin_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "reason": st.text(max_size=2100) | json_values,
            "actor": st.text(max_size=210) | json_values,
            "weight": st.floats() | json_values,
            "to": st.sampled_from([100, 99, "100", None]) | json_values,
        },
    )
    | json_values
)
admin_routes = st.sampled_from(
    [("POST", f"/admin/rollout/{a}") for a in ("start", "pause", "resume", "promote", "rollback")]
    + [("PUT", "/admin/rollout/weight"), ("GET", "/admin/rollout"), ("GET", "/admin/rollout/events")]
)


@pytest.fixture(scope="module")
def app(deploy: Deploy, no_gates: dict[str, Any]) -> Iterator[httpx.Client]:
    with deploy("hostile", rollout=no_gates) as client:
        yield client


def _replicas() -> dict[str, int]:
    from ray import serve

    deployments = serve.status().applications["hostile"].deployments
    return {name: len(d.replica_states) for name, d in deployments.items()}


FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def test_fuzzed_predict_bodies_never_get_a_5xx(app: httpx.Client) -> None:
    @FUZZ
    @given(body=predict_bodies)
    def check(body: Any) -> None:
        response = app.post("/v1/predict", content=json.dumps(body))
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], response.text  # a message, naming the field where there is one

    check()


def test_fuzzed_admin_bodies_never_get_a_5xx(app: httpx.Client) -> None:
    @FUZZ
    @given(route=admin_routes, body=admin_bodies, authorized=st.booleans())
    def check(route: tuple[str, str], body: Any, authorized: bool) -> None:
        method, path = route
        response = app.request(method, path, content=json.dumps(body), headers=AUTH if authorized else {})
        assert response.status_code < 500, (route, body, response.text)
        if not authorized:
            assert response.status_code == 401

    check()


RAW_BODIES = [
    b"\xff\xfe\xfa not utf-8",
    b'{"inputs": ["\xc3\x28"]}',  # invalid UTF-8 inside a JSON string
    b'{"inputs": [NaN]}',
    b'{"inputs": ["ok"], "routing_key": Infinity}',
    b'{"inputs": ["a"]' + b" " * 10,  # truncated JSON
    b"",
    b"[]",
    b'{"inputs": []}',
    b'{"inputs": [""]}',
    json.dumps({"inputs": ["x"] * 65}).encode(),
    json.dumps({"inputs": ["y" * 2001]}).encode(),
    json.dumps({"inputs": ["z"], "routing_key": "k" * 257}).encode(),
    b"{" * 10_000,  # deeply nested garbage
]


@pytest.mark.parametrize("body", RAW_BODIES, ids=range(len(RAW_BODIES)))
def test_malformed_bytes_get_a_4xx_with_a_message(app: httpx.Client, body: bytes) -> None:
    response = app.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and response.json()["detail"], response.text


def test_oversized_bodies_are_refused_before_parsing(app: httpx.Client) -> None:
    huge = json.dumps({"inputs": ["w" * 1000] * 400}).encode()  # ~400 kB, over the 256 KiB bound
    assert app.post("/v1/predict", content=huge).status_code == 413
    assert app.put("/admin/rollout/weight", content=huge, headers=AUTH).status_code == 413
    assert app.put("/admin/rollout/weight", content=huge).status_code == 413  # before the token is read


def _evidence(app: httpx.Client) -> dict[str, int]:
    evidence: dict[str, int] = app.get("/admin/rollout", headers=AUTH).json()["evidence"]
    return evidence


def _observed(evidence: dict[str, int]) -> int:
    return evidence["student_requests"] + evidence["teacher_requests"]


def _evidence_after_a_good_request(app: httpx.Client, within_s: float = 60.0) -> dict[str, int]:
    """The controller's evidence once it holds a good request sent now. A router reports a
    request's observations together (a shadowed one's after its shadow call) and in order, so
    everything sent before it has been counted too: no waiting on a flush interval."""
    seen = _observed(_evidence(app))
    assert app.post("/v1/predict", json={"inputs": ["still fine"]}).status_code == 200
    deadline = time.monotonic() + within_s
    while _observed(evidence := _evidence(app)) == seen:
        assert time.monotonic() < deadline, f"the good request never reached the evidence: {evidence}"
        time.sleep(0.1)
    return evidence


def test_rejected_requests_leave_no_evidence_and_no_restart(app: httpx.Client) -> None:
    replicas = _replicas()
    before = _evidence_after_a_good_request(app)
    for body in RAW_BODIES:
        assert app.post("/v1/predict", content=body).status_code >= 400
    after = _evidence_after_a_good_request(app)
    # The wait above saw the marker arrive, so the count grew; what may not grow with it is anything
    # from the rejected bodies: only the marker's own answer, and its shadow answer if it had one.
    assert _observed(after) - _observed(before) <= 2
    unchanged = ("epoch", "student_errors", "teacher_errors", "consecutive_student_errors")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert _replicas() == replicas


def test_the_request_rate_limit_answers_429_and_keeps_serving(deploy: Deploy) -> None:
    from serving.config import RouterConfig

    limited = RouterConfig(poll_interval_s=0.2, flush_interval_s=0.2, max_requests_per_s=5.0, burst_s=1.0)
    with deploy("limited", router_settings=limited) as client:
        first = client.post("/v1/predict", json={"inputs": ["x"]})
        with ThreadPoolExecutor(8) as pool:  # far over 5/s however slow the machine is today
            codes = list(pool.map(lambda _: client.post("/v1/predict", json={"inputs": ["x"]}), range(60)))
        refused = [r for r in codes if r.status_code == 429]
        assert first.status_code == 200 and refused and {r.status_code for r in codes} <= {200, 429}
        assert refused[0].headers["retry-after"] == "1" and "5 requests/s" in refused[0].json()["detail"]
        time.sleep(float(refused[-1].headers["retry-after"]))  # as a client honouring Retry-After would
        assert client.post("/v1/predict", json={"inputs": ["x"]}).status_code == 200


# --- bundles broken on disk ---------------------------------------------------------------


def _copy(serving_bundles: Any, tmp_path: Path) -> tuple[Path, str]:
    source = load_bundle(serving_bundles.registry, serving_bundles.student_id)
    shutil.copytree(source.path, tmp_path / "models" / source.id)
    return tmp_path / "models" / source.id, source.id


def test_corrupt_manifest_is_refused_with_a_clear_error(serving_bundles: Any, tmp_path: Path) -> None:
    copy, bundle_id = _copy(serving_bundles, tmp_path)
    (copy / "manifest.json").write_text('{"schema_version": 1, "id": ')
    with pytest.raises(BundleRejectedError, match=r"refusing to serve .*manifest"):
        load_bundle(tmp_path, bundle_id)


def test_truncated_onnx_file_is_refused(serving_bundles: Any, tmp_path: Path) -> None:
    copy, bundle_id = _copy(serving_bundles, tmp_path)
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(BundleRejectedError, match=r"model\.onnx does not match"):
        load_bundle(tmp_path, bundle_id)


def test_a_broken_bundle_does_not_replace_a_serving_one(deploy: Deploy, serving_bundles: Any, tmp_path: Path) -> None:
    from ray import serve

    from serving.app import AppArgs, app_builder
    from serving.config import Resources

    copy, bundle_id = _copy(serving_bundles, tmp_path)
    with deploy("steady", weight=1.0) as client:
        assert client.post("/v1/predict", json={"inputs": ["fine"]}).json()["variant"] == "student"
        shutil.copytree(load_bundle(serving_bundles.registry, serving_bundles.teacher_id).path,
                        tmp_path / "models" / serving_bundles.teacher_id)  # fmt: skip
        (copy / "model.onnx").write_bytes(b"not a model")
        broken = AppArgs(
            teacher_id=serving_bundles.teacher_id, student_id=bundle_id, registry=tmp_path,
            teacher=Resources(num_cpus=0.25), student=Resources(num_cpus=0.25), router=Resources(num_cpus=0.1),
        )  # fmt: skip
        with pytest.raises(RuntimeError, match=r"(?i)refusing to serve|deploy"):
            serve.run(app_builder(broken), name="steady", route_prefix="/steady")
        answers = [client.post("/v1/predict", json={"inputs": ["still serving"]}) for _ in range(20)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
