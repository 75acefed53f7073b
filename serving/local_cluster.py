"""A two-node Ray cluster on this machine, started with Ray's own CLI, for drills, benchmarks and tests.

`ray start --head` (custom resource `teacher_node`) and `ray start --address ...` (resource
`student_node`), every node on 127.0.0.1, Ray's token authentication on, each `--block` in a
process group of its own so that a node can be killed whole (SIGKILL to the group, and to its
worker processes, which Ray starts in sessions of their own). kdcanary goes on it as an operator
deploys it: `serve deploy` of deploy/serve_config.yaml, changed by `serve_config` only where
this machine differs (registry, state directory, ports, smaller replicas) and in where the
replicas go: teacher, router and controller on the head, the student on the worker.

    with LocalCluster(folder, admin_token) as cluster:
        cluster.serve_deploy(serve_config(cluster, registry, state_dir, teacher, student, spec), "first")
        cluster.wait_running()
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "serve_config.yaml"
BIN = Path(sys.executable).parent
APP = "kdcanary"
NODE_RESOURCES = {"head": "teacher_node", "worker": "student_node"}


class LocalCluster:
    """Head and worker nodes, their Serve application, and what it takes to talk to them."""

    def __init__(self, folder: Path, admin_token: str) -> None:
        self.folder = folder  # logs and the configs deployed
        self.temp_dir = Path(tempfile.mkdtemp(prefix="kdc-"))  # Ray's socket paths must stay under 108 bytes
        self.gcs_port, self.dashboard_port, self.http_port = free_port(), free_port(), free_port()
        self.dashboard_url, self.http_url = (
            f"http://127.0.0.1:{self.dashboard_port}",
            f"http://127.0.0.1:{self.http_port}",
        )
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "KDCANARY_ADMIN_TOKEN": admin_token,  # the replicas read it from their node's environment
            "PYTHONPATH": str(SERVE_CONFIG.parents[1]),  # the replicas import this checkout
        }
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.node_ids: dict[str, str] = {}
        self.config: dict[str, Any] = {}  # the Serve config deployed last

    @property
    def service_discovery_file(self) -> Path:
        """Ray's Prometheus service-discovery file: every node's metrics address."""
        return self.temp_dir / "prom_metrics_service_discovery.json"

    def __enter__(self) -> LocalCluster:
        try:
            self._start_node(
                "head", "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--temp-dir={self.temp_dir}", '--system-config={"metrics_report_interval_ms": 2000}',
            )  # fmt: skip
            wait_until(lambda: self._alive_nodes() >= 1, 120, "the head node")
            self._start_node("worker", f"--address=127.0.0.1:{self.gcs_port}")
            wait_until(lambda: self._alive_nodes() == 2, 120, "the worker node")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for name in reversed(list(self.nodes)):
            self.stop_node(name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    # --- nodes --------------------------------------------------------------------------------

    def _start_node(self, name: str, *args: str) -> None:
        log = (self.folder / f"{name}.log").open("w")
        self.nodes[name] = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
             "--num-cpus=1", f'--resources={{"{NODE_RESOURCES[name]}": 1}}',
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def kill_node(self, name: str, workers: list[int] | None = None) -> None:
        """The whole node at once: `ray start` with its raylet (one process group) and its workers."""
        workers = self.worker_pids(name) if workers is None else workers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes[name].pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes[name].wait(timeout=60)

    def stop_node(self, name: str, grace_s: float = 3.0) -> None:
        """`ray start --block` stops its processes on SIGTERM; what is left after `grace_s` is killed."""
        workers = self.worker_pids(name)
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            self.nodes[name].terminate()
            self.nodes[name].wait(timeout=grace_s)
        self.kill_node(name, workers)

    def worker_pids(self, name: str) -> list[int]:
        """The pids of the Ray worker processes on node `name` (empty when the API cannot say)."""
        try:
            node_id = self.node_ids[name]
            workers = self.api("/api/v0/workers?limit=1000&detail=true")["data"]["result"]["result"]
        except (httpx.HTTPError, KeyError):
            return []
        return [w["pid"] for w in workers if w.get("node_id") == node_id and w.get("pid")]

    def _alive_nodes(self) -> int:
        """How many nodes are alive, noting each one's id under the name its resource gives."""
        try:
            nodes = self.api("/api/v0/nodes?limit=10&detail=true")["data"]["result"]["result"]
        except (httpx.HTTPError, KeyError):
            return 0
        alive = [node for node in nodes if node["state"] == "ALIVE"]
        for node in alive:
            self.node_ids |= {n: node["node_id"] for n, r in NODE_RESOURCES.items() if r in node["resources_total"]}
        return len(alive)

    # --- Serve --------------------------------------------------------------------------------

    def api(self, path: str) -> Any:
        """GET on Ray's dashboard API, with the cluster's token."""
        headers = {"authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        response = httpx.get(f"{self.dashboard_url}{path}", headers=headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def serve_deploy(self, config: dict[str, Any], name: str) -> None:
        """`serve deploy` of `config`, written to `<folder>/<name>.yaml`."""
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [str(BIN / "serve"), "deploy", str(path), "--address", self.dashboard_url],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"serve deploy {path} failed: {done.stderr[-3000:]}")
        self.config = copy.deepcopy(config)

    def replicas(self) -> dict[str, list[dict[str, Any]]]:
        """Each deployment's replicas as Serve's REST API shows them (id, pid, node, state)."""
        application = self.api("/api/serve/applications/")["applications"][APP]
        return {name: deployment["replicas"] for name, deployment in application["deployments"].items()}

    def replica_ids(self) -> dict[str, set[str]]:
        return {name: {r["replica_id"] for r in replicas} for name, replicas in self.replicas().items()}

    def wait_running(self, within_s: float = 240.0) -> None:
        """Until the application is RUNNING: every deployment at its target config."""

        def running() -> bool:
            application = self.api("/api/serve/applications/")["applications"].get(APP)
            return application is not None and application["status"] == "RUNNING"

        wait_until(running, within_s, f"{APP} RUNNING")


def serve_config(
    cluster: LocalCluster, registry: Path, state_dir: Path, teacher: str, student: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """deploy/serve_config.yaml for this cluster: its registry, state, ports and node placement."""
    on_head, on_worker = {"teacher_node": 0.01}, {"student_node": 0.01}
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"  # one HTTP port per machine: every node here is 127.0.0.1
    config["http_options"] = {"host": "127.0.0.1", "port": cluster.http_port}
    (app,) = config["applications"]
    app["args"] |= {
        "registry": str(registry),
        "state_dir": str(state_dir),
        "teacher": {"num_cpus": 0.25, "resources": on_head},
        "student": {"num_cpus": 0.25, "resources": on_worker},
        "router": {"num_replicas": 1, "num_cpus": 0.1, "resources": on_head},
    }
    config = with_user_config(config, "teacher", {"bundle": teacher})
    config = with_user_config(config, "student", {"bundle": student})
    config = with_user_config(config, "controller", spec)
    router = _deployment(config, "router")
    router["user_config"] |= {"student_timeout_s": 0.5, "poll_interval_s": 0.2, "flush_interval_s": 0.2}
    _deployment(config, "controller")["ray_actor_options"] = {"num_cpus": 0.1, "resources": on_head}
    return config


def with_user_config(config: dict[str, Any], deployment: str, user_config: dict[str, Any]) -> dict[str, Any]:
    """`config` with one deployment's user_config replaced: what an operator edits between deploys."""
    return with_deployment(config, deployment, user_config=user_config)


def with_deployment(config: dict[str, Any], deployment: str, **fields: Any) -> dict[str, Any]:
    """`config` with fields of one deployment's entry set (user_config, num_replicas, ...)."""
    changed = copy.deepcopy(config)
    _deployment(changed, deployment).update(fields)
    return changed


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    (app,) = config["applications"]
    (entry,) = [d for d in app["deployments"] if d["name"] == name]
    return entry


def wait_until(done: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {within_s} s")
        time.sleep(0.25)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
