"""Every command in the README's bash blocks, run as written, so the README cannot rot.

`kdcanary ...` lines run for real against the session's tiny registry ($KDCANARY_REGISTRY);
the first `kdcanary serve` line starts a real server in the background (its own Ray, port
8000), the `curl` and `kdcanary rollout` lines after it talk to it, and it is stopped with
Ctrl-C (SIGINT) as a person would. A second `kdcanary serve` line is checked by parsing its
arguments into the application it would deploy (one live server per test is enough on two
cores). `make` lines must name a Makefile target; `make demo` is `kdcanary demo`, whose
rollouts tests/e2e/test_compress_tiny.py runs, and `make test` is this very suite.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_readme_command_runs(tiny_run: Any, tmp_path: Path) -> None:
    registry, _ = tiny_run
    bin_dir = str(Path(sys.executable).parent)  # where `kdcanary` is installed, as after `make install`
    env = {**os.environ, "KDCANARY_REGISTRY": str(registry.root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["KDCANARY_STATE_DIR"] = str(tmp_path / "rollout-state")  # a fresh rollout, whatever ran before
    server: subprocess.Popen[str] | None = None
    ran: list[str] = []
    try:
        for line in readme_commands():
            words = shlex.split(line)
            if words[0] == "make":
                assert re.search(rf"^{words[1]}:", (ROOT / "Makefile").read_text(), re.M), line
            elif words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = value
            elif words[:2] == ["kdcanary", "serve"] and server is None:
                server = _start_server(words, env, tmp_path / "serve.log")
            elif words[:2] == ["kdcanary", "serve"]:
                _check_serve_arguments(words, env)
            else:
                done = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            ran.append(line)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=120)
    assert any(line.startswith("curl") for line in ran) and server is not None and server.returncode == 0


def _start_server(words: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as sink:
        server = subprocess.Popen(words, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while "kdcanary serving" not in log.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"kdcanary serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(1.0)
    httpx.post("http://127.0.0.1:8000/v1/predict", json={"inputs": ["warm-up"]}, timeout=60)
    return server


def _check_serve_arguments(words: list[str], env: dict[str, str]) -> None:
    """The flags parse and become the application `kdcanary serve` would deploy."""
    from compression.registry import Registry
    from serving.cli import _parser, serve_app_args

    args = _parser().parse_args(words[1:])
    registry = Registry(Path(env["KDCANARY_REGISTRY"]))
    teacher, student = registry.get(args.teacher), registry.get(args.student)
    built = serve_app_args(args, teacher.id, student.id, registry.root)
    assert (built.teacher_id, built.student_id) == (teacher.id, student.id)
    assert (built.teacher_runtime, built.teacher.num_cpus) == (args.teacher_runtime, args.model_cpus)
