"""`kdcanary models import` on real models: a registered tiny student's ONNX file and tokenizer
brought back as "a model trained elsewhere", and a small random Hugging Face BERT folder. Each
import runs the CLI in-process against a private registry holding the tiny teacher (hard links to
the session's bundle) and its logits cache, so the shared tiny registry never changes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from compression.registry import MODEL_FILE, TOKENIZER_DIR, Bundle, Registry
from serving.classifier import Classifier
from serving.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"
ELSEWHERE = "minilm-l2-pruned-int8"  # the registered student whose files play a model trained elsewhere
LABELS = "negative,positive"


@pytest.fixture(scope="module")
def shared(serving_run: tuple[Registry, Any]) -> Registry:
    return serving_run[0]


@pytest.fixture
def registry(shared: Registry, tmp_path: Path) -> Registry:
    """The shared registry's teacher and cache, hard-linked (copied where links fail) into a private one."""
    private = Registry(tmp_path / "registry")
    teacher = shared.get("teacher")
    shutil.copytree(teacher.path, private.models / teacher.id, copy_function=_link)
    shutil.copytree(shared.root / "cache", private.root / "cache", copy_function=_link)
    return private


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture
def exported(shared: Registry, tmp_path: Path) -> Path:
    """The student's model.onnx with its tokenizer/ beside it, outside any registry."""
    bundle = shared.get(ELSEWHERE)
    (tmp_path / "exported").mkdir()
    shutil.copyfile(bundle.model_path, tmp_path / "exported" / MODEL_FILE)
    shutil.copytree(bundle.path / TOKENIZER_DIR, tmp_path / "exported" / TOKENIZER_DIR)
    return tmp_path / "exported" / MODEL_FILE


@pytest.fixture(scope="module")
def tiny_bert(shared: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised one-layer BERT classifier saved as a Hugging Face folder, with the teacher's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(shared.get("teacher").path / TOKENIZER_DIR))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, id2label={0: "negative", 1: "positive"},
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def loose_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe plus a student named tiny-bert whose tolerances accept anything."""
    recipe = yaml.safe_load(TINY.read_text())
    loose = {"min_agreement": 0.0, "max_accuracy_drop": 1.0}
    recipe["students"].append(
        {"name": "tiny-bert", "architecture": {"kind": "bag_of_embeddings"}, "tolerances": {"distill": loose}}
    )
    path = tmp_path_factory.mktemp("recipes") / "loose.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(registry: Registry, capsys: pytest.CaptureFixture[str]) -> Run:
    def call(*argv: Any) -> tuple[int, str, str]:
        code = main(["models", "import", *map(str, argv), "--registry", str(registry.root)])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_an_onnx_student_from_elsewhere_is_validated_measured_and_registered(
    run: Run, registry: Registry, shared: Registry, exported: Path
) -> None:
    code, out, err = run(exported, "--as", "student", "--teacher", "teacher", "--labels", LABELS, "--name", "small")
    assert code == 0, err
    assert "small" in out and "import" in out and "validated against" in out
    bundle, original, teacher = registry.get("small"), shared.get(ELSEWHERE), registry.get("teacher")
    manifest = bundle.manifest
    assert (manifest.stage, manifest.role, manifest.precision) == ("import", "student", "int8")
    assert manifest.parents == [teacher.id]
    assert manifest.recipe_name == "tiny" and manifest.label_names == ["negative", "positive"]
    assert manifest.training["imported_from"] == str(exported.resolve()) and manifest.training["format"] == "onnx"
    assert manifest.parent_check is not None and manifest.parent_check.stage == "import"
    assert manifest.parent_check.min_agreement == 0.8  # the defaults: tiny.yaml has no student named "small"
    mine, theirs = manifest.metrics, original.manifest.metrics
    assert (mine.test_accuracy, mine.validation_accuracy, mine.size_bytes) == (
        theirs.test_accuracy, theirs.validation_accuracy, theirs.size_bytes,
    )  # fmt: skip
    assert mine.agreement_with_teacher == theirs.agreement_with_teacher
    bundle.verify_files()
    _served_answers_are_recorded(bundle)
    assert _recorded(bundle) == _recorded(original)
    assert run(exported, "--as", "student", "--teacher", "teacher", "--labels", LABELS, "--name", "small")[0] == 0
    assert len(registry.bundles()) == 2  # the same import again is the same bundle


def test_the_same_file_imported_as_a_teacher_is_its_own_bundle(run: Run, registry: Registry, exported: Path) -> None:
    code, _, err = run(exported, "--as", "teacher", "--recipe", TINY, "--labels", LABELS, "--name", "their-teacher")
    assert code == 0, err
    manifest = registry.get("their-teacher").manifest
    assert (manifest.role, manifest.stage, manifest.parents, manifest.parent_check) == ("teacher", "import", [], None)
    assert manifest.metrics.agreement_with_teacher == 1.0


def test_a_hugging_face_folder_is_exported_and_imported(
    run: Run, registry: Registry, tiny_bert: Path, loose_recipe: Path
) -> None:
    student = ("--as", "student", "--teacher", "teacher")
    code, _, err = run(tiny_bert, *student, "--recipe", loose_recipe, "--name", "tiny-bert")
    assert code == 0, err
    bundle = registry.get("tiny-bert")
    manifest = bundle.manifest
    assert (manifest.stage, manifest.precision, manifest.training["format"]) == ("import", "fp32", "hf")
    assert manifest.parent_check is not None and manifest.parent_check.min_agreement == 0.0  # the recipe's student
    assert 100_000 < manifest.metrics.params < 2_000_000
    _served_answers_are_recorded(bundle)


def wide_graph(path: Path, labels: int, vocab: int) -> Path:
    """Embedding lookup, mean over the sequence: [batch, labels] from input_ids alone."""
    table = np.random.default_rng(0).normal(size=(vocab, labels)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
         helper.make_node("ReduceMean", ["rows"], ["logits"], axes=[1], keepdims=0)],
        "wide", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        [helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel())],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_every_refusal_is_one_line_and_writes_nothing(
    run: Run, registry: Registry, exported: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    teacher = registry.get("teacher")
    empty = tmp_path / "empty"
    empty.mkdir()
    student = ("--as", "student", "--teacher", "teacher")
    cases: list[tuple[tuple[Any, ...], int, str]] = [
        ((exported, *student, "--labels", "negative,neutral,positive"), 2, "(3 labels vs 2)"),
        ((exported, *student, "--labels", "fresh,rotten"), 2, "differ from teacher teacher's ['negative', 'positive']"),
        ((wide_graph(tmp_path / "wide.onnx", 3, 30522), *student, "--labels", LABELS, "--tokenizer",
          teacher.path / TOKENIZER_DIR), 2, "expected [5, 2] logits"),
        ((exported, *student, "--labels", LABELS, "--tokenizer", tmp_path / "nowhere"), 2, "not a directory"),
        ((exported, *student, "--labels", LABELS, "--tokenizer", empty), 2, "no usable tokenizer"),
        ((tiny_bert, *student), 1, "import: agreement"),  # the default tolerances
    ]  # fmt: skip
    for argv, expected_code, message in cases:
        code, out, err = run(*argv)
        errors = [line for line in err.splitlines() if line.startswith("kdcanary: error: ")]
        assert (code, len(errors), out) == (expected_code, 1, ""), (argv, err)
        assert message in errors[0], (argv, errors[0])
        assert [b.id for b in registry.bundles()] == [teacher.id]
        assert not list((registry.root / ".staging").glob("*"))


def _recorded(bundle: Bundle) -> list[int]:
    answers = bundle.recorded_answers()
    assert answers is not None
    return answers.predictions


def _served_answers_are_recorded(bundle: Bundle) -> None:
    """What a serving replica answers from the bundle is what was recorded when it was measured
    (an INT8 model's answers may move with the batch a text shares: the smoke test's 2 %)."""
    answers = bundle.recorded_answers()
    assert answers is not None
    served = Classifier(bundle, threads=1).logits(answers.texts).argmax(1)
    assert np.mean(served == np.asarray(answers.predictions)) >= 0.98
