"""Integration fixtures for serving: real bundles, one Ray + Serve session per pytest session.

Bundles come from the tiny recipe (the `serving_run` fixture in tests/conftest.py: the teacher
and the minilm-l2 chain, built once per test run). To reuse a registry already built from
recipes/tiny.yaml across runs, point KDCANARY_TEST_REGISTRY at it; the bundles are then looked
up by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ports import free_port
from rollout_admin import ADMIN_TOKEN, FEEDBACK_TOKEN, FORCE_TOKEN, admin_client, pin_weight

from compression.registry import Registry

TEST_REGISTRY_ENV = "KDCANARY_TEST_REGISTRY"
STUDENT_NAME = "minilm-l2-pruned-int8"
OTHER_STUDENT_NAME = "minilm-l2-pruned"  # its parent in the chain: a second student to swap in
METRICS_EXPORT_MS = 2000
SERVE_STATUS_GAUGE_ENV = "RAY_SERVE_STATUS_GAUGE_REPORT_INTERVAL_S"


@dataclass(frozen=True)
class Bundles:
    registry: Path
    teacher_id: str
    student_id: str
    other_student_id: str


@dataclass(frozen=True)
class ServeCluster:
    http_url: str
    metrics_url: str
    admin_token: str


@pytest.fixture(scope="session")
def serving_bundles(request: pytest.FixtureRequest) -> Bundles:
    root = os.environ.get(TEST_REGISTRY_ENV)
    if root:
        registry = Registry(Path(root))
        ids = [registry.get(name).id for name in ("teacher", STUDENT_NAME, OTHER_STUDENT_NAME)]
        return Bundles(registry.root, *ids)
    registry, summary = request.getfixturevalue("serving_run")
    chain = summary.students["minilm-l2"]
    assert [bundle.manifest.name for bundle in chain[-2:]] == [OTHER_STUDENT_NAME, STUDENT_NAME]
    return Bundles(registry.root, summary.teacher.id, chain[-1].id, chain[-2].id)


@pytest.fixture
def teacher_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """A registry of the test's own holding the tiny teacher and its cached logits, copied from the
    session's build: a test's students are built there, and the shared registry stays as it was."""
    shared, _ = request.getfixturevalue("serving_run")
    registry = Registry(tmp_path / "registry")
    teacher = shared.get("teacher")
    shutil.copytree(teacher.path, registry.models / teacher.id)
    shutil.copytree(shared.root / "cache", registry.root / "cache")
    return registry


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    """Ray (4 logical CPUs, no dashboard, metrics on a free port) and Serve on 127.0.0.1."""
    import ray
    from ray import serve

    os.environ["KDCANARY_ADMIN_TOKEN"] = ADMIN_TOKEN  # workers inherit the driver's environment
    os.environ["KDCANARY_FEEDBACK_TOKEN"] = FEEDBACK_TOKEN
    os.environ["KDCANARY_FORCE_TOKEN"] = FORCE_TOKEN
    # Ray exports metrics every 10 s and Serve refreshes its status gauge as often; tests that wait
    # for Prometheus to see a counter move wait for two exports. A 2 s export (Ray drops a gauge
    # left unset for 2 exports, so Serve's gauge is refreshed every second) makes those waits
    # shorter, and changes nothing a test asserts.
    os.environ[SERVE_STATUS_GAUGE_ENV] = "1"
    metrics_port, http_port = free_port(), free_port()
    ray.init(
        address="local", num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port, log_to_driver=False,
        _system_config={"metrics_report_interval_ms": METRICS_EXPORT_MS},
    )  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield ServeCluster(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics", ADMIN_TOKEN)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("KDCANARY_ADMIN_TOKEN", None)
        os.environ.pop("KDCANARY_FEEDBACK_TOKEN", None)
        os.environ.pop("KDCANARY_FORCE_TOKEN", None)
        os.environ.pop(SERVE_STATUS_GAUGE_ENV, None)


@pytest.fixture(scope="session")
def no_gates() -> dict[str, Any]:
    """A rollout spec whose stage 0 holds (default min_requests) and that no gate judges: only an
    admin intent can move it (no smoke test either: it would start stage 0 by itself). With the
    default gates, a few shadowed answers to one repeated input could roll a rollout back before
    or after a test read its status, depending on how fast the machine was (a fresh clone saw it)."""
    stages = [{"weight": 0}, {"weight": 1}]
    return {"stages": stages, "agreement": None, "errors": None, "latency": None, "smoke": None}


Deploy = Callable[..., AbstractContextManager[httpx.Client]]
RunApp = Callable[[Any, str], AbstractContextManager[httpx.Client]]


@pytest.fixture(scope="session")
def run_app(serve_cluster: ServeCluster) -> RunApp:
    """`with run_app(application, name) as client:` serves a bound application at /<name> and
    deletes it on the way out, so applications do not pile up on the session's 4 logical CPUs."""
    from ray import serve

    @contextlib.contextmanager
    def run(application: Any, name: str) -> Iterator[httpx.Client]:
        serve.run(application, name=name, route_prefix=f"/{name}")
        try:
            with httpx.Client(base_url=f"{serve_cluster.http_url}/{name}", timeout=30.0) as client:
                yield client
        finally:
            serve.delete(name)

    return run


@pytest.fixture(scope="session")
def deploy(run_app: RunApp, serving_bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Deploy:
    """`with deploy(name, **app_args) as client:` runs app_builder's application at /<name> on
    small replicas (the AppArgs given override the defaults), through `run_app`.

    `weight=W` (and `shadow=S`) serve a fixed share as an operator would: a spec that judges
    nothing (`fixed_share_spec(S)`), the rollout started and W pinned through the admin client."""
    from rollout.spec import fixed_share_spec
    from serving.app import AppArgs, app_builder
    from serving.config import Batching, Resources, RouterConfig

    @contextlib.contextmanager
    def run(name: str, weight: float | None = None, shadow: float = 0.0, **overrides: Any) -> Iterator[httpx.Client]:
        small = Resources(num_cpus=0.25)
        if weight is not None:
            overrides["rollout"] = fixed_share_spec(shadow)
        args = AppArgs(
            **{
                "teacher_id": serving_bundles.teacher_id,
                "student_id": serving_bundles.student_id,
                "registry": serving_bundles.registry,
                "teacher": small,
                "student": small,
                "router": Resources(num_cpus=0.1, num_replicas=overrides.pop("routers", 1)),
                "batching": Batching(max_batch_size=8, batch_wait_timeout_s=0.002),
                "router_settings": RouterConfig(poll_interval_s=0.2, flush_interval_s=0.2),
                "state_dir": tmp_path_factory.mktemp(f"state-{name}"),
                **overrides,
            }
        )
        with run_app(app_builder(args), name) as client:
            if weight is not None:
                with admin_client(client) as admin:
                    pin_weight(client, admin, weight)
            yield client

    return run
