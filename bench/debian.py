"""Debian tools the benchmarks and tests run (`hey`, Prometheus), installed by apt when missing.

`ensure_tools("prometheus", ["prometheus", "promtool"])` returns each binary's path, installing
the package first when one is not on PATH. One install at a time on this machine (a file lock):
two processes may both find a tool missing, and a second apt-get would fail on dpkg's lock
instead of waiting. A machine that cannot install gets a ToolError that says what to run by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
APT_TIMEOUT_S = 900
INSTALL_LOCK = Path(tempfile.gettempdir()) / "kdcanary-apt-install.lock"


class ToolError(RuntimeError):
    """A tool is missing and cannot be installed here."""


def ensure_tools(package: str, binaries: list[str]) -> list[Path]:
    """The paths of `binaries`, from PATH, installing Debian's `package` first when one is absent."""
    found = _which(binaries)
    if found:
        return found
    with FileLock(INSTALL_LOCK):
        return _which(binaries) or _install(package, binaries)


def _which(binaries: list[str]) -> list[Path] | None:
    paths = [shutil.which(binary) for binary in binaries]
    return [Path(path) for path in paths if path] if all(paths) else None


def _install(package: str, binaries: list[str]) -> list[Path]:
    by_hand = f"install Debian's `{package}` package by hand (`apt-get install --no-install-recommends {package}`)"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ToolError(f"{', '.join(binaries)} not on PATH and apt-get needs root here: {by_hand}")
    for args in (["update"], ["install", "-y", "--no-install-recommends", package]):
        done = subprocess.run(
            ["apt-get", *args], env={**os.environ, **APT_ENV}, capture_output=True, text=True,
            timeout=APT_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or [""]
            raise ToolError(f"`apt-get {' '.join(args)}` failed (exit {done.returncode}: {tail[0]}); {by_hand}")
    found = _which(binaries)
    if found is None:
        raise ToolError(f"apt installed `{package}` but {', '.join(binaries)} are still not on PATH")
    return found
