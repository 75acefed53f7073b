from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression.cache import TeacherCache
from compression.errors import ManifestError, ToleranceError, UnknownModelError
from compression.recipe import Tolerance
from compression.registry import MANIFEST, Latency, Metrics, Preprocessing, Registry
from compression.report import markdown_table, pareto_front
from compression.validate import check_against_parent


def fields(name: str, parents: list[str], accuracy: float, latency: float, stage: str = "distill") -> dict[str, Any]:
    metrics = Metrics(
        test_accuracy=accuracy, validation_accuracy=accuracy, agreement_with_teacher=0.9,
        latency_ms=Latency(threads=1, b1_p50=latency, b1_p99=latency, b32_p50=latency, b32_p99=latency),
        size_bytes=10, params=5,
    )  # fmt: skip
    return {
        "name": name, "role": "teacher" if not parents else "student", "stage": stage if parents else "teacher",
        "precision": "fp32", "parents": parents, "stage_key": f"key-{name}", "recipe_name": "t", "recipe": {},
        "data_hash": "d", "label_names": ["a", "b"], "preprocessing": Preprocessing(max_length=8), "metrics": metrics,
    }  # fmt: skip


def add(registry: Registry, name: str, parents: list[str], accuracy: float = 0.8, latency: float = 1.0) -> str:
    with registry.staging() as staging:
        (staging / "model.onnx").write_bytes(name.encode())
        return registry.register(staging, fields(name, parents, accuracy, latency)).id


def test_register_get_and_lineage(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    teacher = add(registry, "teacher", [])
    student = add(registry, "student", [teacher])
    assert registry.get(student).manifest.name == "student"
    assert registry.get(student[:5]).id == student
    assert registry.get("student").id == student
    assert [b.manifest.name for b in registry.lineage("student")] == ["student", "teacher"]
    assert registry.find_stage("key-student") is not None and registry.find_stage("nope") is None
    assert not any((tmp_path / ".staging").iterdir())  # staging emptied by the rename
    with pytest.raises(UnknownModelError, match="no such id or name"):
        registry.get("ghost")


def test_a_breach_is_remembered_by_its_stage_key(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.find_breach("key-student") is None
    registry.record_breach("key-student", "distill: agreement 0.610 < 0.900")
    assert registry.find_breach("key-student") == "distill: agreement 0.610 < 0.900"
    assert registry.bundles() == [] and registry.find_stage("key-student") is None  # nothing registered
    assert [p.name for p in (tmp_path / "breaches").iterdir()] == ["key-student.txt"]  # no file left aside


def test_same_content_registers_once(tmp_path: Path) -> None:
    """Also when two writers race (a fanned-out run): the later rename is refused, the first bundle kept."""
    registry = Registry(tmp_path)
    assert add(registry, "teacher", []) == add(registry, "teacher", [])
    assert len(registry.bundles()) == 1
    assert not any((tmp_path / ".staging").iterdir())


def test_incomplete_manifest_leaves_models_untouched(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    broken = fields("teacher", [], 0.8, 1.0)
    del broken["metrics"]
    with pytest.raises(Exception, match="metrics"), registry.staging() as staging:
        (staging / "model.onnx").write_bytes(b"x")
        registry.register(staging, broken)
    assert not registry.models.exists() or not any(registry.models.iterdir())
    assert not any((tmp_path / ".staging").iterdir())  # and the half-made bundle is gone


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda text: "{not json", "not JSON"),
        (
            lambda text: text.replace('"schema_version": 1', '"schema_version": 7'),
            "unknown schema_version 7",
        ),
        (
            lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "metrics"}),
            "field 'metrics'",
        ),
    ],
)
def test_corrupt_manifests_are_named(tmp_path: Path, mutate: Any, message: str) -> None:
    registry = Registry(tmp_path)
    bundle = registry.get(add(registry, "teacher", []))
    manifest = bundle.path / MANIFEST
    manifest.write_text(mutate(manifest.read_text()))
    with pytest.raises(ManifestError, match=message) as caught:
        registry.bundles()
    assert str(manifest) in str(caught.value)


def test_files_that_disagree_with_the_manifest_are_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    bundle = registry.get(add(registry, "teacher", []))
    bundle.verify_files()
    bundle.model_path.write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="does not match"):
        bundle.verify_files()


def test_pareto_front_and_table(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    teacher = add(registry, "teacher", [], accuracy=0.84, latency=8.0)
    add(registry, "fast", [teacher], accuracy=0.80, latency=1.0)
    add(registry, "dominated", [teacher], accuracy=0.79, latency=2.0)
    bundles = registry.bundles()
    front = {b.manifest.name for b in bundles if b.id in pareto_front(bundles)}
    assert front == {"teacher", "fast"}
    table = markdown_table(bundles)
    assert table.index("| fast |") < table.index("| dominated |") < table.index("| teacher |")  # by latency


def test_tolerance_breach_carries_the_numbers() -> None:
    labels = np.array([0, 1, 0, 1])
    parent = np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    child = np.array([[1.0, 0], [1, 0], [1, 0], [1, 0]])
    with pytest.raises(ToleranceError, match=r"agreement 0\.500 < 0\.900 with parent p1 on n=4"):
        check_against_parent(
            "quantize",
            "p1",
            child,
            parent,
            labels,
            Tolerance(min_agreement=0.9, max_accuracy_drop=1),
        )
    with pytest.raises(ToleranceError, match=r"0\.500 below parent p1's 1\.000"):
        check_against_parent("prune", "p1", child, parent, labels, Tolerance(min_agreement=0, max_accuracy_drop=0.1))
    ok = check_against_parent("prune", "p1", parent, parent, labels, Tolerance(min_agreement=1, max_accuracy_drop=0))
    assert ok.agreement == 1.0 and ok.accuracy == 1.0


def test_cache_runs_each_text_once_and_only_the_new_ones(tmp_path: Path) -> None:
    runs: list[list[str]] = []

    def model(texts: list[str]) -> Callable[[np.ndarray], np.ndarray]:
        def compute(rows: np.ndarray) -> np.ndarray:
            runs.append([texts[i] for i in rows])
            return np.array([[len(texts[i]), i % 2] for i in rows], dtype=np.float32)

        return compute

    def expected(texts: list[str]) -> np.ndarray:
        return np.array([len(t) for t in texts], dtype=np.float32)

    cache = TeacherCache(tmp_path)
    first = ["a", "bb", "ccc", "bb"]  # a repeated text runs once
    assert np.array_equal(cache.rows("teacher", 64, "logits", first, model(first))[:, 0], expected(first))
    assert runs == [["a", "bb", "ccc"]]
    more = ["dddd", "ccc", "a", "eeeee"]  # another process, the same folder: only the new texts run
    assert np.array_equal(TeacherCache(tmp_path).rows("teacher", 64, "logits", more, model(more))[:, 0], expected(more))
    assert runs[1:] == [["dddd", "eeeee"]]
    TeacherCache(tmp_path).rows("teacher", 32, "logits", first, model(first))  # another max length: its own shelf
    assert len(runs) == 3 and not list(tmp_path.rglob("*.partial"))
