"""A real Prometheus for integration tests, started and stopped by pid, on a free loopback port.

`running_prometheus(tools, config, folder)` writes `config` (a prometheus.yml as a mapping) into
`folder`, starts Debian's prometheus on it, waits until it is ready and stops it on the way out.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from ports import free_port
from prometheus_install import PrometheusTools


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer to an instant query at now (status, data or error)."""
        answer: dict[str, Any] = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        return answer

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=10).json()["data"]


@contextlib.contextmanager
def running_prometheus(tools: PrometheusTools, config: dict[str, Any], folder: Path) -> Iterator[Prometheus]:
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [str(tools.prometheus), f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={address}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_ready(f"http://{address}", process, folder / "prometheus.log")
        yield Prometheus(f"http://{address}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"prometheus exited: {log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"prometheus not ready after 60 s: {log.read_text()[-3000:]}"
        time.sleep(0.2)
