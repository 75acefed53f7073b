"""Tests are marked by folder: unit (no Ray, fakes, fast), integration (real Ray Serve,
ONNX Runtime, Prometheus), e2e (the demo path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.pipeline import RunSummary, compress
from compression.recipe import load_recipe
from compression.registry import Registry

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS.parent / "recipes" / "tiny.yaml"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if folder in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, RunSummary]:
    """The tiny recipe built once per test session into a fresh registry: real bundles
    (teacher, layer-cut, pruned, INT8 and baseline students) for every test that needs them."""
    registry = Registry(tmp_path_factory.mktemp("registry"))
    return registry, compress(load_recipe(TINY_RECIPE), registry)
