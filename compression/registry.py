"""The model registry: one directory per bundle, named by the content hash of its files.

    <root>/models/<id>/manifest.json      what the model is: lineage, recipe, data, metrics
    <root>/models/<id>/model.onnx         the serving artifact
    <root>/models/<id>/tokenizer/         its own preprocessing
    <root>/models/<id>/torch/             architecture + weights, for FP32 stages (parents of later stages)
    <root>/breaches/<stage key>.txt       a stage that breached its tolerance, and why: a re-run reports
                                          it without training again (delete the file to try again)

A bundle is assembled in <root>/.staging and renamed into place in one step, manifest
written last, so a crash leaves no half bundle in models/. The manifest is the single record
of what a model is: nothing else re-derives accuracy or lineage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compression.errors import ManifestError, UnknownModelError
from compression.validate import ParentCheck

SCHEMA_VERSION: Literal[1] = 1
MANIFEST = "manifest.json"
BREACHES = "breaches"
MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
TORCH_DIR = "torch"
REGISTRY_ENV = "KDCANARY_REGISTRY"
DEFAULT_REGISTRY = Path("registry")


class Latency(BaseModel):
    """ONNX Runtime on CPU, milliseconds, with the intra-op thread count it ran under."""

    threads: int
    b1_p50: float
    b1_p99: float
    b32_p50: float
    b32_p99: float


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_accuracy: float
    validation_accuracy: float
    agreement_with_teacher: float  # top-1, on the test split
    latency_ms: Latency
    size_bytes: int  # bytes of the served model file
    params: int


ANSWERS_FILE = "answers.json"
RECORDED_ANSWERS = 256


class RecordedAnswers(BaseModel):
    """A bundle's own top-1 answers on the first validation texts (at most RECORDED_ANSWERS),
    with their labels: the served model must answer them again (the smoke test before a rollout)."""

    model_config = ConfigDict(extra="forbid")
    split: str
    texts: list[str]
    labels: list[int]
    predictions: list[int]


class Preprocessing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: str = TOKENIZER_DIR
    max_length: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1]
    id: str
    name: str
    role: Literal["teacher", "student"]
    stage: Literal["teacher", "distill", "prune", "quantize", "import"]  # import: trained elsewhere
    precision: Literal["fp32", "int8"]
    parents: list[str]
    stage_key: str  # hash of everything that determined this stage's output; re-runs look it up
    recipe_name: str
    recipe: dict[str, Any]
    data_hash: str
    label_names: list[str]
    preprocessing: Preprocessing
    model_file: str = MODEL_FILE
    files: dict[str, str]  # relative path -> sha256
    metrics: Metrics
    parent_check: ParentCheck | None = None
    training: dict[str, Any] = Field(default_factory=dict)  # history, sweep grid, pruning shapes
    created_at: datetime


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    def recorded_answers(self) -> RecordedAnswers | None:
        """What the bundle answered when it was registered; None for a bundle registered before
        kdcanary recorded them."""
        path = self.path / ANSWERS_FILE
        return RecordedAnswers.model_validate_json(path.read_text()) if path.is_file() else None

    @property
    def torch_path(self) -> Path | None:
        return self.path / TORCH_DIR if (self.path / TORCH_DIR).is_dir() else None

    def verify_files(self) -> None:
        """Raise ManifestError if any file differs from the hash its manifest records."""
        for relative, expected in self.manifest.files.items():
            target = self.path / relative
            if not target.is_file():
                raise ManifestError(f"bundle {self.id}: {relative} is missing")
            if _sha256(target) != expected:
                raise ManifestError(f"bundle {self.id}: {relative} does not match its manifest hash")


def default_root() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder to assemble one bundle in. Whatever is left of it afterwards is removed
        (nothing, once `register` renamed it into models/), so a failure leaves no half bundle."""
        path = self.root / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def register(self, staging: Path, fields: dict[str, Any]) -> Bundle:
        """Hash the staged files, write the manifest, and move the bundle into place atomically.

        Raises pydantic's ValidationError before touching models/ if the manifest is incomplete.
        """
        files = {str(p.relative_to(staging)): _sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:12]
        manifest = Manifest(
            schema_version=SCHEMA_VERSION, id=digest, files=files, created_at=datetime.now(UTC), **fields
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        target = self.models / digest
        self.models.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)  # atomic; refused when the bundle exists (a directory with files)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(staging)  # same content already registered, maybe by a writer beside us: keep it
        return self.get(digest)

    def __iter__(self) -> Iterator[Bundle]:
        if not self.models.is_dir():
            return
        for path in sorted(self.models.iterdir()):
            if path.is_dir():
                yield Bundle(path, read_manifest(path / MANIFEST))

    def bundles(self) -> list[Bundle]:
        return sorted(self, key=lambda b: b.manifest.created_at)

    def get(self, ref: str) -> Bundle:
        """A bundle by id, unique id prefix, or name (the newest of that name)."""
        exact = self.models / ref
        if (exact / MANIFEST).is_file():
            return Bundle(exact, read_manifest(exact / MANIFEST))
        everything = self.bundles()
        by_prefix = [b for b in everything if b.id.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        by_name = [b for b in everything if b.manifest.name == ref]
        if by_name:
            return by_name[-1]
        hint = "ambiguous prefix" if by_prefix else "no such id or name"
        raise UnknownModelError(f"model '{ref}': {hint} in registry {self.root}")

    def find_stage(self, stage_key: str) -> Bundle | None:
        return next((b for b in self if b.manifest.stage_key == stage_key), None)

    def record_breach(self, stage_key: str, message: str) -> None:
        """Remember that this stage breached its tolerance. Its key covers everything that decided
        the outcome (parent, settings, tolerances, data, seed), so the same key breaches again."""
        folder = self.root / BREACHES
        folder.mkdir(parents=True, exist_ok=True)
        aside = folder / f".{stage_key}.{uuid.uuid4().hex}"
        aside.write_text(message)
        os.replace(aside, folder / f"{stage_key}.txt")  # whole or not at all, with writers beside us

    def find_breach(self, stage_key: str) -> str | None:
        """The recorded breach of this stage, if an earlier run recorded one."""
        path = self.root / BREACHES / f"{stage_key}.txt"
        return path.read_text() if path.is_file() else None

    def lineage(self, ref: str) -> list[Bundle]:
        """The bundle, its parent, its parent's parent... back to the teacher."""
        chain = [self.get(ref)]
        while chain[-1].manifest.parents:
            chain.append(self.get(chain[-1].manifest.parents[0]))
        return chain


def read_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: corrupt manifest, not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: corrupt manifest, expected a JSON object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: unknown schema_version {raw.get('schema_version')!r} (this kdcanary reads {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ManifestError(f"{path}: corrupt manifest, field '{field}': {err['msg']}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
