"""Tests are marked by folder: unit (no Ray, fakes, fast), integration (real Ray Serve,
ONNX Runtime, Prometheus), e2e (the demo path).

`make test` runs the suite on two pytest-xdist workers (files are the unit of distribution:
`--dist loadfile`), each with its own Ray session; the tiny registry is built once and shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filelock import FileLock

from compression.pipeline import RunSummary, compress
from compression.recipe import load_recipe
from compression.registry import Registry

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS.parent / "recipes" / "tiny.yaml"


FIRST = ("e2e/test_compress_tiny.py", "unit")
"""Run order (the Makefile keeps it with --no-loadscope-reorder): the file that builds the tiny
registry and then runs the demo (the longest chain) starts at once on one worker while the other
runs the unit tests, which need no registry; everything else follows. Nothing heavier runs beside
the build: with the student models' torch checks beside it, the build took 262 s instead of
155-180 s (two torch processes with two threads each on two cores)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if folder in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))
    items.sort(key=_run_order)  # stable: the order inside each file is kept


def _run_order(item: pytest.Item) -> int:
    path = Path(str(item.fspath)).relative_to(TESTS).as_posix()
    return next((rank for rank, first in enumerate(FIRST) if path.startswith(first)), len(FIRST))


def shared_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder every xdist worker of this run sees (the run's own base temp when serial)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Registry, RunSummary]:
    """The tiny recipe built once per test run into a fresh registry: real bundles (teacher,
    layer-cut, pruned, INT8 and baseline students) for every test that needs them.

    The first worker to take the lock builds; the others then run the same recipe against the
    built registry, which recomputes nothing. Their summary carries the building run's forward
    batches (saved beside the registry), so every worker reports the run that built it."""
    root = shared_dir(tmp_path_factory, worker_id)
    registry, built = Registry(root / "registry"), root / "registry-build.json"
    with FileLock(root / "registry.lock"):
        summary = compress(load_recipe(TINY_RECIPE), registry)
        if built.is_file():
            summary.forward_batches = json.loads(built.read_text())
        else:
            built.write_text(json.dumps(summary.forward_batches))
    return registry, summary
