"""`kdcanary models import`'s checks, without torch or a registry: label names, where a model's
files are, the graph signature (on hand-built ONNX graphs), and the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from compression.errors import LabelMismatchError, ModelImportError, ModelSignatureError
from compression.importing import (
    ImportRequest,
    check_labels,
    check_roles,
    check_signature,
    hf_label_names,
    parse_labels,
    precision_of,
    resolve_source,
)
from compression.runtime import session
from serving.cli import main


def tiny_graph(
    path: Path, labels: int = 2, inputs: tuple[str, ...] = ("input_ids",), dtype: int = TensorProto.INT64
) -> Path:
    """input_ids -> float -> mean over the sequence -> [batch, labels]; other inputs are ignored."""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["mean", "weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(name, dtype, ["batch", "sequence"]) for name in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        [helper.make_tensor("weight", TensorProto.FLOAT, [1, labels], np.arange(labels, dtype=np.float32))],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


BATCH = (np.array([[101, 7, 102], [101, 8, 0]], dtype=np.int64), np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64))


def test_labels_come_from_a_comma_list_or_a_file(tmp_path: Path) -> None:
    assert parse_labels(" fresh, rotten ,") == ["fresh", "rotten"]
    (tmp_path / "labels.txt").write_text("negative\n\npositive\n")
    assert parse_labels(str(tmp_path / "labels.txt")) == ["negative", "positive"]


def test_hf_labels_are_id2label_in_output_order(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"10": "k", "2": "c", "0": "a", "1": "b"}}))
    assert hf_label_names(tmp_path) == ["a", "b", "c", "k"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(LabelMismatchError, match="no id2label"):
        hf_label_names(tmp_path)


def test_label_mismatches_name_both_lists() -> None:
    check_labels(["negative", "positive"], ["negative", "positive"], "m.onnx", "teacher t")
    with pytest.raises(LabelMismatchError, match=r"\['positive', 'negative'\] of m.onnx differ from teacher t's"):
        check_labels(["positive", "negative"], ["negative", "positive"], "m.onnx", "teacher t")
    with pytest.raises(LabelMismatchError, match=r"\(3 labels vs 2\)"):
        check_labels(["a", "b", "c"], ["negative", "positive"], "m.onnx", "teacher t")


def test_a_student_needs_a_teacher_and_a_teacher_a_recipe() -> None:
    with pytest.raises(ModelImportError, match="needs --teacher"):
        check_roles(ImportRequest(source=Path("m.onnx"), role="student"))
    with pytest.raises(ModelImportError, match="needs --recipe"):
        check_roles(ImportRequest(source=Path("m.onnx"), role="teacher"))
    with pytest.raises(ModelImportError, match="--teacher is for students"):
        check_roles(ImportRequest(source=Path("m.onnx"), role="teacher", teacher="t", recipe=Path("r.yaml")))
    with pytest.raises(ValidationError, match="name"):
        ImportRequest(source=Path("m.onnx"), role="student", teacher="t", name="has space")


def test_sources_resolve_their_format_tokenizer_and_labels(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"id2label": {"0": "negative", "1": "positive"}}))
    found = resolve_source(ImportRequest(source=hf, role="student", teacher="t"))
    assert (found.format, found.tokenizer, found.default_name) == ("hf", hf, "hf")
    assert found.labels == ["negative", "positive"]
    with pytest.raises(ModelImportError, match=r"come from its config\.json"):
        resolve_source(ImportRequest(source=hf, role="student", teacher="t", labels=["a", "b"]))
    model = tiny_graph(tmp_path / "model.onnx")
    with pytest.raises(LabelMismatchError, match="pass --labels"):
        resolve_source(ImportRequest(source=model, role="student", teacher="t"))
    (tmp_path / "tokenizer").mkdir()
    found = resolve_source(ImportRequest(source=model, role="student", teacher="t", labels=["a", "b"]))
    assert (found.format, found.tokenizer, found.default_name) == ("onnx", tmp_path / "tokenizer", tmp_path.name)
    with pytest.raises(ModelImportError, match=r"neither an \.onnx file nor"):
        resolve_source(ImportRequest(source=tmp_path / "missing", role="student", teacher="t"))


def test_a_graph_of_the_right_signature_passes(tmp_path: Path) -> None:
    check_signature(session(tiny_graph(tmp_path / "a.onnx"), threads=1), 2, *BATCH)
    both = tiny_graph(tmp_path / "b.onnx", inputs=("input_ids", "attention_mask"))
    check_signature(session(both, threads=1), 2, *BATCH)
    assert precision_of(both) == "fp32"


@pytest.mark.parametrize(
    ("labels", "inputs", "dtype", "message"),
    [
        (3, ("input_ids",), TensorProto.INT64, r"output has shape \[2, 3\] .* expected \[2, 2\]"),
        (2, ("input_ids", "token_type_ids"), TensorProto.INT64, r"expected input_ids and optionally attention_mask"),
        (2, ("input_ids",), TensorProto.INT32, r"must be int64, got \{'input_ids': 'tensor\(int32\)'\}"),
    ],
)
def test_a_graph_of_another_signature_is_refused(
    tmp_path: Path, labels: int, inputs: tuple[str, ...], dtype: int, message: str
) -> None:
    model = tiny_graph(tmp_path / "m.onnx", labels, inputs, dtype)
    with pytest.raises(ModelSignatureError, match=message):
        check_signature(session(model, threads=1), 2, *BATCH)


def test_cli_errors_are_one_line_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_graph(tmp_path / "m.onnx")
    registry = ["--registry", str(tmp_path / "r")]
    code = main(["models", "import", str(model), "--as", "student", "--teacher", "t", *registry])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pass --labels in output order" in err
    assert main(["models", "import", str(model), "--as", "student", *registry]) == 2
    assert "needs --teacher" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
