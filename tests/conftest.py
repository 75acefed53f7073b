"""Tests are marked by folder: unit (no Ray, fakes, fast), integration (real Ray Serve,
ONNX Runtime, Prometheus), e2e (the demo path).

`make test` runs the suite on two pytest-xdist workers (files are the unit of distribution:
`--dist loadfile`), each with its own Ray session; the tiny registry is built once and shared.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from filelock import FileLock

from compression.recipe import load_recipe
from compression.registry import Registry

if TYPE_CHECKING:
    from compression.pipeline import RunSummary

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS.parent / "recipes" / "tiny.yaml"


FIRST = (
    "e2e/test_compress_tiny.py",
    "unit",
    "integration/test_student_models.py",
    "integration/test_cluster.py",
    "e2e/test_readme.py",
)
LAST = (
    "integration/test_serving_autoscaling.py",
    "integration/test_serving_failover.py",
    "integration/test_security.py",
    "integration/test_import.py",
    "integration/test_preprocessing.py",
    "integration/test_teacher_cache.py",
    "integration/test_serving_model.py",
)
"""Run order (the Makefile keeps it with --no-loadscope-reorder; a worker takes the next file when
its own are nearly done): the file that builds the tiny registry and then runs the demo (the
longest chain) starts at once on one worker while the other runs what needs no registry (the
unit tests, the student models' torch checks), then the cluster tests, whose first (the fan-out's
own recipe) needs no registry and whose serving ones start as soon as the students they deploy
are built (`serving_run`), and the README test, which needs every bundle (built by then). The
files between take one to two and a half minutes each; the quick ones come LAST, shortest last,
so that both workers finish close together. With the README test last, one worker ran it alone
for a minute while the other had finished. Before the fan-out moved up, the other worker waited
for the serving students with a core idle about half the time. The torch checks beside the build
cost it little only because waiting threads sleep (`pytest_configure`): with spinning ones the
build took 262 s instead of 155-180 s."""


def pytest_configure(config: pytest.Config) -> None:
    """Torch's OpenMP threads wait asleep, not spinning, in every process of the run (set before
    anything imports torch; xdist workers and the CLI subprocesses inherit it). The build, the
    student checks and the Ray replicas share two cores: a spinning thread burns the time slice
    another process is waiting for. Measured by hand on the 2-core box (not a benchmark): the
    teacher and one student built beside a busy loop in 114 s instead of 183 s, and in 82 s
    instead of 74 s on an idle machine."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if folder in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))
    items.sort(key=_run_order)  # stable: the order inside each file is kept


def _run_order(item: pytest.Item) -> int:
    path = Path(str(item.fspath)).relative_to(TESTS).as_posix()
    for rank, prefix in enumerate((*FIRST, *LAST)):
        if path.startswith(prefix):
            return rank if rank < len(FIRST) else rank + 1  # the files in neither list go between
    return len(FIRST)


def shared_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder every xdist worker of this run sees (the run's own base temp when serial)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


SERVING_STUDENTS = ("minilm-l2", "bag")
"""The recipe's students the serving tests deploy (with the teacher)."""


@pytest.fixture(scope="session")
def serving_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Registry, RunSummary]:
    """The teacher and the serving tests' students of the tiny recipe, built first so that those
    tests start while the rest of the recipe builds. Their bundles are the full run's: a stage's
    key depends only on its own chain."""
    return _build(shared_dir(tmp_path_factory, worker_id), SERVING_STUDENTS, "serving")


@pytest.fixture(scope="session")
def tiny_run(
    serving_run: tuple[Registry, RunSummary], tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> tuple[Registry, RunSummary]:
    """The whole tiny recipe built once per test run into a fresh registry: real bundles (teacher,
    layer-cut, pruned, INT8 and baseline students) for every test that needs them."""
    return _build(shared_dir(tmp_path_factory, worker_id), (), "everything")


def _build(root: Path, only: tuple[str, ...], part: str) -> tuple[Registry, RunSummary]:
    """Run the tiny recipe (or `only` its students named) into the run's shared registry.

    Each part has its own lock: the first worker to take it builds, the others then run the
    same recipe against the built registry, which recomputes nothing and only reads (bundles and
    cache entries are renamed into place whole). With one lock for both parts, the worker that
    had just built the serving part took the lock again at once for the rest, and the other
    worker waited for everything (a fresh clone's serving tests started after 183 s, not ~120).
    Forward batches are summed over every build of the run (saved beside the registry), so each
    summary reports what building the registry really cost: a teacher pass recomputed by a later
    build would count twice."""
    from compression.pipeline import compress  # torch: after pytest_configure set its threads' policy

    registry, record = Registry(root / "registry"), root / "registry-build.json"
    with FileLock(root / f"registry-{part}.lock"):
        summary = compress(load_recipe(TINY_RECIPE), registry, only)
    with FileLock(root / "registry-build.lock"):
        batches = Counter(json.loads(record.read_text()) if record.is_file() else {})
        batches.update(summary.forward_batches)
        record.write_text(json.dumps(batches))
    summary.forward_batches = dict(batches)
    return registry, summary
