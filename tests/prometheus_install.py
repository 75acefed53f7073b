"""Prometheus and promtool for the tests, installed from Debian's packages when missing.

Imported by tests/unit/test_deploy_files.py (promtool checks) and
tests/integration/test_prometheus.py (a real Prometheus); tests/ is on sys.path because
tests/conftest.py lives there. The install runs once per machine, as root, through apt; a
machine that cannot install gets a failure that says what to run by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
APT_TIMEOUT_S = 900
INSTALL_LOCK = Path(tempfile.gettempdir()) / "kdcanary-prometheus-install.lock"


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: Path
    promtool: Path


def _which() -> PrometheusTools | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return PrometheusTools(Path(prometheus), Path(promtool))
    return None


def _apt(*args: str) -> None:
    done = subprocess.run(
        ["apt-get", *args],
        env={**os.environ, **APT_ENV},
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"`apt-get {' '.join(args)}` failed (exit {done.returncode}); install Prometheus by hand "
            f"(`apt-get install --no-install-recommends prometheus`, which brings promtool) or put "
            f"`prometheus` and `promtool` on PATH:\n{done.stderr[-2000:]}",
            pytrace=False,
        )


def ensure_prometheus() -> PrometheusTools:
    """`prometheus` and `promtool` from PATH, installing Debian's package first when absent.

    One install at a time on this machine: two pytest workers may both find it missing, and
    a second apt-get would fail on dpkg's lock instead of waiting."""
    found = _which()
    if found:
        return found
    with FileLock(INSTALL_LOCK):
        return _which() or _install()


def _install() -> PrometheusTools:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            "prometheus/promtool are not on PATH and cannot be installed here (needs root and apt-get); "
            "install Debian's `prometheus` package or Prometheus's release binaries",
            pytrace=False,
        )
    _apt("update")
    _apt("install", "-y", "--no-install-recommends", "prometheus")
    found = _which()
    if found is None:
        pytest.fail("apt installed `prometheus` but prometheus/promtool are still not on PATH", pytrace=False)
    return found
