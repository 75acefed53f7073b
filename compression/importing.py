"""`kdcanary models import`: register a model trained elsewhere as a teacher, or as a student of
a registered teacher, through the same gates and measurements as every compressed stage.

Accepted: an ONNX classifier (input_ids [, attention_mask] int64 -> [batch, labels] logits) with
its tokenizer folder and label names, or a Hugging Face sequence-classification folder
(config.json with id2label, weights, tokenizer), exported to ONNX here. The bundle is measured
on the recipe's validation and test splits with compression/stages.py's own `_measure`,
`_register` and `_record_answers`; a student is first checked against its teacher with the
recipe's tolerances. Anything wrong (labels, graph, tokenizer, a tolerance) is one
ModelImportError or ToleranceError and nothing is registered: the bundle is assembled in the
registry's staging folder and renamed into place only when complete.

Torch-free at import time: the checks below run without it, and the compression stages (which
import torch) are loaded only when a model is really imported.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from compression.data import Corpus, load_corpus
from compression.errors import (
    ImportTokenizerError,
    LabelMismatchError,
    ModelImportError,
    ModelSignatureError,
    TeacherLoadError,
)
from compression.preprocessing import pad, run_logits
from compression.recipe import Recipe, Tolerance, Tolerances, load_recipe
from compression.registry import MODEL_FILE, TOKENIZER_DIR, Bundle, Registry
from compression.runtime import session

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from compression.context import Context

IMPORT_FILE = "import.json"
MODEL_INPUTS = ("input_ids", "attention_mask")
INT8_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"}
PROBE_ROWS = 4
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ImportRequest(BaseModel):
    """What `kdcanary models import` was asked to do; each value is checked here, which flags a role
    needs by `check_roles`, both before anything is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Path  # an .onnx file or a Hugging Face model folder
    role: Literal["teacher", "student"]
    teacher: str | None = None  # students: the registered teacher (id, id prefix or name)
    recipe: Path | None = None  # whose splits measure it; students default to their teacher's recipe
    tokenizer: Path | None = None
    labels: list[str] | None = Field(default=None, min_length=1)  # ONNX only: names in output order
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    max_length: int | None = Field(default=None, ge=4, le=512)


class ImportRecord(BaseModel):
    """`import.json` in the bundle: what was imported and as what. A bundle's id hashes its files,
    so this keeps an import apart from a bundle with the same model and tokenizer files (the
    same ONNX file imported as a teacher and as a student are two bundles)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["onnx", "hf"]
    source_sha256: str
    role: Literal["teacher", "student"]
    name: str
    parents: list[str]
    label_names: list[str]
    max_length: int


@dataclass(frozen=True)
class Source:
    """The model to import, resolved: its format, tokenizer folder and label names."""

    path: Path
    format: Literal["onnx", "hf"]
    tokenizer: Path
    labels: list[str]

    @property
    def default_name(self) -> str:
        return self.path.parent.name if self.path.stem == "model" else self.path.stem


def parse_labels(value: str) -> list[str]:
    """`--labels`: a file with one name per line, or comma-separated names."""
    path = Path(value)
    raw = path.read_text().splitlines() if path.is_file() else value.split(",")
    return [name.strip() for name in raw if name.strip()]


def hf_label_names(model_dir: Path) -> list[str]:
    """A Hugging Face folder's labels, in output order, from config.json's id2label."""
    try:
        id2label = json.loads((model_dir / "config.json").read_text()).get("id2label") or {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelImportError(f"{model_dir}/config.json: unreadable ({exc})") from exc
    if not id2label:
        raise LabelMismatchError(f"{model_dir}/config.json has no id2label: its label names are unknown")
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


def resolve_source(request: ImportRequest) -> Source:
    """The model's format, tokenizer folder and labels, from the path and the flags."""
    path = request.source
    if path.is_dir() and (path / "config.json").is_file():
        if request.labels is not None:
            raise ModelImportError(f"{path}: a Hugging Face model's labels come from its config.json, not --labels")
        return Source(path, "hf", request.tokenizer or path, hf_label_names(path))
    if path.is_file() and path.suffix == ".onnx":
        if request.labels is None:
            raise LabelMismatchError(f"{path}: an ONNX model carries no label names; pass --labels in output order")
        beside = path.parent / TOKENIZER_DIR
        return Source(path, "onnx", request.tokenizer or (beside if beside.is_dir() else path.parent), request.labels)
    raise ModelImportError(f"{path}: neither an .onnx file nor a Hugging Face model folder with config.json")


def check_labels(labels: list[str], expected: list[str], source: str, owner: str) -> None:
    """Equal names in equal order, or a LabelMismatchError naming both lists."""
    if labels != expected:
        count = "" if len(labels) == len(expected) else f" ({len(labels)} labels vs {len(expected)})"
        raise LabelMismatchError(f"labels {labels} of {source} differ from {owner}'s {expected}{count}")


def check_signature(sess: ort.InferenceSession, n_labels: int, ids: np.ndarray, mask: np.ndarray) -> None:
    """The graph takes int64 input_ids (and optionally attention_mask) and returns [batch, n_labels]
    logits on one real batch; anything else is a ModelSignatureError saying what it found."""
    inputs = {i.name: i.type for i in sess.get_inputs()}
    if "input_ids" not in inputs or set(inputs) - set(MODEL_INPUTS):
        raise ModelSignatureError(f"model inputs {sorted(inputs)}: expected input_ids and optionally attention_mask")
    if wrong := {name: kind for name, kind in inputs.items() if kind != "tensor(int64)"}:
        raise ModelSignatureError(f"model inputs must be int64, got {wrong}")
    try:
        logits = run_logits(sess, ids, mask)
    except Exception as exc:
        raise ModelSignatureError(f"model fails on a batch of shape {list(ids.shape)}: {_first_line(exc)}") from exc
    if logits.shape != (len(ids), n_labels):
        raise ModelSignatureError(
            f"model output has shape {list(logits.shape)} for a batch of {len(ids)}: "
            f"expected [{len(ids)}, {n_labels}] logits, one column per label"
        )


def precision_of(model: Path) -> Literal["fp32", "int8"]:
    ops = {node.op_type for node in onnx.load(str(model), load_external_data=False).graph.node}
    return "int8" if ops & INT8_OPS else "fp32"


def check_roles(request: ImportRequest) -> None:
    """The flags a role needs (a ModelImportError, one line naming the flag)."""
    if request.role == "student" and request.teacher is None:
        raise ModelImportError("a student needs --teacher (the registered teacher it is validated against)")
    if request.role == "teacher" and request.teacher is not None:
        raise ModelImportError("--teacher is for students; a teacher is imported on its own")
    if request.role == "teacher" and request.recipe is None:
        raise ModelImportError("a teacher needs --recipe (whose data measures it)")


def import_model(request: ImportRequest, registry: Registry) -> Bundle:
    """Validate, measure and register the model `request` names; return its bundle."""
    check_roles(request)
    source = resolve_source(request)
    teacher = registry.get(request.teacher) if request.teacher else None
    if teacher is not None and teacher.manifest.role != "teacher":
        raise ModelImportError(f"--teacher {request.teacher}: bundle {teacher.id} is a student, not a teacher")
    recipe = _recipe(request, teacher)
    corpus = load_corpus(recipe.data, recipe.seed)
    if teacher is not None:
        check_labels(source.labels, teacher.manifest.label_names, str(source.path), f"teacher {teacher.manifest.name}")
    check_labels(source.labels, corpus.label_names, str(source.path), f"recipe {recipe.name}'s data")
    name = request.name or source.default_name
    if not re.fullmatch(NAME_PATTERN, name):
        raise ModelImportError(f"model name {name!r} (from {source.path.name}) is not usable: pass --name")
    with registry.staging() as staging:
        return _import_staged(request, source, recipe, corpus, teacher, name, registry, staging)


def _import_staged(
    request: ImportRequest, source: Source, recipe: Recipe, corpus: Corpus, teacher: Bundle | None,
    name: str, registry: Registry, staging: Path,
) -> Bundle:  # fmt: skip
    """Tokenizer, model, signature, parent check, measurement, registration: all in `staging`."""
    from compression.context import Context
    from compression.stages import _check, _measure, _register, stage_key

    ctx = Context(recipe, corpus, registry, _stage_tokenizer(source.tokenizer, staging / TOKENIZER_DIR))
    max_length, tolerance = _settings(request, recipe, name)
    digest = _digest(source.path)
    parents = [teacher.id] if teacher else []
    settings = {"source": digest, "role": request.role, "name": name, "tolerance": tolerance.model_dump()}
    key = stage_key(ctx, "import", parents[0] if parents else "", settings | {"max_length": max_length})
    if existing := registry.find_stage(key):
        return existing
    params = _stage_model(source, ctx, staging / MODEL_FILE, max_length)
    check_signature(session(staging / MODEL_FILE, threads=1), len(source.labels), *_probe(ctx, max_length))
    check = None
    if teacher is not None:  # the context reads the teacher's logits in the teacher's own tokens
        check = _check(ctx, staging, max_length, "import", teacher, tolerance)
    metrics = _measure(ctx, staging, max_length, params, teacher, check)
    record = ImportRecord(
        format=source.format, source_sha256=digest, role=request.role, name=name, parents=parents,
        label_names=source.labels, max_length=max_length,
    )  # fmt: skip
    (staging / IMPORT_FILE).write_text(record.model_dump_json(indent=2))
    identity = {"name": name, "role": request.role, "stage": "import", "precision": precision_of(staging / MODEL_FILE)}
    training = {"imported_from": str(source.path.resolve()), "format": source.format, "source_sha256": digest}
    return _register(ctx, staging, identity, teacher, check, key, metrics, training, max_length)


def _recipe(request: ImportRequest, teacher: Bundle | None) -> Recipe:
    """The recipe asked for, else (students) the one the teacher was measured with."""
    if request.recipe is not None:
        return load_recipe(request.recipe)
    assert teacher is not None  # check_roles: a teacher comes with --recipe
    return Recipe.model_validate(teacher.manifest.recipe)


def _settings(request: ImportRequest, recipe: Recipe, name: str) -> tuple[int, Tolerance]:
    """Served max length and tolerance: the flags, else the recipe's student of the same name
    (a student checked directly against its teacher, as after distillation), else the defaults."""
    same = next((s for s in recipe.students if s.name == name), None)
    max_length = request.max_length or (same.max_length if same else None) or recipe.preprocessing.max_length
    return max_length, (same.tolerances if same else Tolerances()).distill


def _stage_tokenizer(directory: Path, target: Path) -> PreTrainedTokenizerBase:
    """Save the model's tokenizer into the bundle and load it back from there, so every
    measurement tokenises exactly as serving will (from the bundle's tokenizer.json)."""
    from compression.text import load_tokenizer

    try:
        tokenizer = load_tokenizer(directory, "tokenizer")
    except TeacherLoadError as exc:
        raise ImportTokenizerError(f"{exc} (pass --tokenizer DIR: a Hugging Face tokenizer folder)") from exc
    if not tokenizer.is_fast:
        raise ImportTokenizerError(f"tokenizer {directory}: not a fast tokenizer (no tokenizer.json can be made)")
    tokenizer.save_pretrained(str(target))
    return load_tokenizer(target, "tokenizer")


def _stage_model(source: Source, ctx: Context, target: Path, max_length: int) -> int:
    """The ONNX model in `target` (copied, or exported from Hugging Face); returns its parameter count."""
    from compression.stages import _copy_onnx_teacher

    if source.format == "hf":
        return _export_hf(source.path, ctx, target, max_length)
    try:
        return _copy_onnx_teacher(source.path, target)
    except TeacherLoadError as exc:
        raise ModelSignatureError(f"{source.path}: ONNX Runtime cannot load it ({_first_line(exc.__cause__)})") from exc


def _export_hf(model_dir: Path, ctx: Context, target: Path, max_length: int) -> int:
    """Load an AutoModelForSequenceClassification folder and export (input_ids, attention_mask) -> logits."""
    from compression.models import count_parameters
    from compression.onnx_runtime import export_onnx

    wrapper = _logits_module(_load_hf_classifier(model_dir))
    export_onnx(wrapper, target, ctx.recipe.export, ctx.encoded("validation", max_length))
    return count_parameters(wrapper)


def _load_hf_classifier(model_dir: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelImportError(f"{model_dir}: no loadable sequence classifier ({_first_line(exc)})") from exc
    if missing := sorted(info["missing_keys"]):
        raise ModelImportError(f"{model_dir}: weights missing for {', '.join(missing[:3])}: untrained, not importable")
    return model


def _logits_module(model: Any) -> Any:
    """The Hugging Face model as kdcanary's classifiers are: (input_ids, attention_mask) -> logits."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits(model).eval()


def _probe(ctx: Context, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """A few validation rows plus one of the full served length (position limits show up here)."""
    encoded = ctx.encoded("validation", max_length)
    rows = encoded.ids[:PROBE_ROWS]
    return pad([*rows, np.resize(rows[0], max_length)], encoded.pad_id)


def _digest(path: Path) -> str:
    """sha256 over a file, or over a folder's files (names and contents)."""
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path.parent if path.is_file() else path)).encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException | None) -> str:
    return " ".join(str(exc).split())[:300]
