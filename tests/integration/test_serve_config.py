"""deploy/serve_config.yaml through Ray's own CLI: `serve run CONFIG --non-blocking` against
the session's cluster, then a request through the deployed router.

Only what a test machine must change is changed: the registry, the state directory and the
bundle refs point at the session's tiny registry, and the replicas are smaller (the session
has 4 logical CPUs shared with other applications).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

CONFIG = Path(__file__).parents[2] / "deploy" / "serve_config.yaml"


def _for_this_machine(serving_bundles: Any, state_dir: Path) -> dict[str, Any]:
    config = yaml.safe_load(CONFIG.read_text())
    (app,) = config["applications"]
    args = app["args"]
    args |= {"registry": str(serving_bundles.registry), "state_dir": str(state_dir)}
    args |= {"teacher_id": serving_bundles.teacher_id, "student_id": serving_bundles.student_id}
    small = {"num_cpus": 0.25}
    args |= {"teacher": small, "student": small, "router": {"num_replicas": 1, "num_cpus": 0.1}}
    return config


def test_serve_config_deploys_through_rays_cli(serve_cluster: Any, serving_bundles: Any, tmp_path: Path) -> None:
    import ray
    from ray import serve

    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(_for_this_machine(serving_bundles, tmp_path / "state")))
    serve_cli = Path(sys.executable).with_name("serve")
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run(
        [str(serve_cli), "run", str(config), "--address", address, "--non-blocking"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": address},
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        _wait_until_running("kdcanary")
        response = httpx.post(f"{serve_cluster.http_url}/v1/predict", json={"inputs": ["a warm film"]}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["variant"] == "teacher"  # the rollout controller starts in shadow
        status = httpx.get(f"{serve_cluster.http_url}/admin/rollout", headers={"authorization": "Bearer wrong"})
        assert status.status_code == 401
    finally:
        serve.delete("kdcanary")


def _wait_until_running(app: str, within_s: float = 120.0) -> None:
    """`--non-blocking` returns once the config is submitted; the replicas start after."""
    from ray import serve

    deadline = time.monotonic() + within_s
    while (status := serve.status().applications.get(app)) is None or status.status != "RUNNING":
        assert time.monotonic() < deadline, f"{app} not running after {within_s} s: {status}"
        time.sleep(0.5)
