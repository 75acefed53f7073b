"""Prometheus and promtool for the tests, installed from Debian's packages when missing
(bench/debian.py does the install; a machine that cannot gets a test failure saying why).

Imported by tests/unit/test_deploy_files.py (promtool checks) and the integration tests that
run a real Prometheus; tests/ is on sys.path because tests/conftest.py lives there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.debian import ToolError, ensure_tools


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: Path
    promtool: Path


def ensure_prometheus() -> PrometheusTools:
    """`prometheus` and `promtool` from PATH, installing Debian's package first when absent."""
    try:
        prometheus, promtool = ensure_tools("prometheus", ["prometheus", "promtool"])
    except ToolError as exc:
        pytest.fail(str(exc), pytrace=False)
    return PrometheusTools(prometheus, promtool)
