"""The recipe: one YAML file that names the data, the teacher, the students and their stages.

Every model is pydantic with ``extra="forbid"`` so that a typo is an error naming the field,
not a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compression.errors import RecipeError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(Strict):
    """Perturbed copies of every training snippet (compression/augment.py says why)."""

    copies: int = Field(default=1, ge=1, le=20)
    word_dropout: float = Field(default=0.15, ge=0, lt=1)  # each word is dropped with this chance
    word_swap: float = Field(default=0.0, ge=0, lt=1)  # each word swaps with its right neighbour

    @model_validator(mode="after")
    def _perturbs(self) -> AugmentConfig:
        if self.word_dropout == 0 and self.word_swap == 0:
            raise ValueError("augment needs word_dropout or word_swap above 0: copies would equal their originals")
        return self


class TransferConfig(Strict):
    """Unlabelled text used only for distillation: the teacher labels it with its logits."""

    plot_sentences: bool = False  # the corpus's plot synopses, split into sentences
    paths: list[Path] = []  # extra .txt (one text per line), .csv or .jsonl with a text column
    max_examples: int | None = Field(default=None, ge=1)  # caps the plot sentences and paths together
    augment: AugmentConfig | None = None  # copies come on top of max_examples


class DataConfig(Strict):
    source: Literal["rotten_tomatoes", "file"] = "rotten_tomatoes"
    path: Path | None = None  # CSV or JSONL, when source is "file"
    text_column: str = "text"
    label_column: str = "label"
    max_examples: int | None = Field(default=None, ge=10)  # stratified subset before splitting
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    transfer: TransferConfig = TransferConfig()

    @model_validator(mode="after")
    def _file_needs_path(self) -> DataConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("data.path is required when data.source is 'file'")
        return self


class PreprocessingConfig(Strict):
    max_length: int = Field(default=64, ge=4, le=512)


Packaged = Literal["all-MiniLM-L6-v2", "all-mpnet-base-v2"]  # pretrained encoders kdcanary finds installed
DEFAULT_PACKAGED: Packaged = "all-MiniLM-L6-v2"


class FineTuneConfig(Strict):
    epochs: int = Field(default=2, ge=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=32, ge=1)
    patience: int = Field(default=1, ge=1)
    # Keep the embeddings and the bottom N encoder layers as pretrained: a BERT-base teacher's
    # backward pass then runs through its top layers only (about 3x faster a step on CPU).
    freeze_layers: int = Field(default=0, ge=0)


class TeacherConfig(Strict):
    """A Hugging Face encoder directory (default: the bundled all-MiniLM-L6-v2), fine-tuned here
    with a classification head, or an ONNX classifier used as it is."""

    kind: Literal["hf", "onnx"] = "hf"
    path: Path | None = None  # None: the `packaged` encoder
    packaged: Packaged = DEFAULT_PACKAGED  # compression/packaged.py says where each comes from
    tokenizer: Path | None = None  # onnx teachers: the tokenizer directory
    name: str = "teacher"
    fine_tune: FineTuneConfig = FineTuneConfig()

    @model_validator(mode="after")
    def _onnx_needs_files(self) -> TeacherConfig:
        if self.kind == "onnx" and (self.path is None or self.tokenizer is None):
            raise ValueError("teacher.path and teacher.tokenizer are required when teacher.kind is 'onnx'")
        return self


class LayersArchitecture(Strict):
    """Keep these encoder layers of the teacher (0-based), with its embeddings and head."""

    kind: Literal["layers"] = "layers"
    layers: list[int] = Field(min_length=1)


class TransformerArchitecture(Strict):
    """A narrower/shallower encoder; word embeddings are copied from the teacher when widths match."""

    kind: Literal["transformer"] = "transformer"
    hidden_size: int = Field(default=256, ge=8)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=1024, ge=8)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerArchitecture:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class BagOfEmbeddingsArchitecture(Strict):
    """Non-transformer baseline: mean of (teacher-initialised) word embeddings, then an MLP."""

    kind: Literal["bag_of_embeddings"] = "bag_of_embeddings"
    hidden_size: int = Field(default=256, ge=8)


class PretrainedArchitecture(Strict):
    """A pretrained encoder of the student's own, with its own tokenizer and width (the
    DistilBERT/MiniLM pattern): `packaged`, or a Hugging Face directory at `path`."""

    kind: Literal["pretrained"] = "pretrained"
    packaged: Packaged | None = None
    path: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PretrainedArchitecture:
        if (self.packaged is None) == (self.path is None):
            raise ValueError("a pretrained student names exactly one of `packaged` and `path`")
        return self


Architecture = Annotated[
    LayersArchitecture | TransformerArchitecture | BagOfEmbeddingsArchitecture | PretrainedArchitecture,
    Field(discriminator="kind"),
]


class DistillConfig(Strict):
    epochs: int = Field(default=3, ge=1)
    temperature: float = Field(default=2.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=32, ge=1)
    patience: int = Field(default=2, ge=1)  # epochs without validation gain before stopping
    hidden_loss_weight: float = Field(default=0.0, ge=0)  # pooled hidden-state MSE; transformer students


class SweepConfig(Strict):
    """Grid over temperature x alpha on a subset; the best by validation accuracy is then trained."""

    temperatures: list[float] = Field(min_length=1)
    alphas: list[float] = Field(min_length=1)
    subset: float = Field(default=0.3, gt=0, le=1)
    epochs: int = Field(default=1, ge=1)


class PruneConfig(Strict):
    """Remove whole attention heads and FFN channels in `steps` rounds, distilling between rounds."""

    head_keep: float = Field(default=0.5, gt=0, le=1)
    ffn_keep: float = Field(default=0.5, gt=0, le=1)
    steps: int = Field(default=2, ge=1)
    finetune_epochs: int = Field(default=1, ge=0)


class QuantizeConfig(Strict):
    mode: Literal["dynamic", "static"] = "dynamic"
    qat_fallback: bool = True  # fake-quant distillation when post-training INT8 breaches tolerance
    qat_epochs: int = Field(default=1, ge=1)
    optimize: bool = False  # ONNX Runtime's transformer optimizer fuses layer norms, GELUs... first
    # 7-bit weights (ONNX Runtime's `reduce_range`): on CPUs without VNNI (AVX2 only) its u8s8
    # kernels add pairs of 8-bit products in saturating int16, which full-range weights overflow.
    reduce_range: bool = False


class Tolerance(Strict):
    """How far a stage's output may drift from its parent on the validation split."""

    min_agreement: float = Field(ge=0, le=1)
    max_accuracy_drop: float = Field(ge=0, le=1)


class Tolerances(Strict):
    distill: Tolerance = Tolerance(min_agreement=0.80, max_accuracy_drop=0.10)
    prune: Tolerance = Tolerance(min_agreement=0.90, max_accuracy_drop=0.03)
    quantize: Tolerance = Tolerance(min_agreement=0.97, max_accuracy_drop=0.015)


class StudentConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    architecture: Architecture
    distill: DistillConfig = DistillConfig()
    sweep: SweepConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = QuantizeConfig()
    max_length: int | None = Field(default=None, ge=4, le=512)  # served max length; default: recipe's
    # "corpus": keep only the teacher's tokens the recipe's text uses (compression/vocabulary.py)
    vocabulary: Literal["teacher", "corpus"] = "teacher"
    tolerances: Tolerances = Tolerances()

    @model_validator(mode="after")
    def _hidden_loss_needs_layers(self) -> StudentConfig:
        if self.distill.hidden_loss_weight > 0 and isinstance(self.architecture, BagOfEmbeddingsArchitecture):
            raise ValueError("distill.hidden_loss_weight needs a transformer student: a bag has no layers")
        return self

    @model_validator(mode="after")
    def _trimming_needs_teacher_tokens(self) -> StudentConfig:
        if self.vocabulary == "corpus" and isinstance(self.architecture, PretrainedArchitecture):
            raise ValueError("vocabulary: corpus trims the teacher's vocabulary; a pretrained student reads its own")
        return self


class ExportConfig(Strict):
    # dynamo: torch.export-based exporter (the default since torch 2.9; needs onnxscript).
    # torchscript: the legacy tracer; required for fake-quant (QAT) graphs.
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    opset: int = Field(default=18, ge=13)


class MeasureConfig(Strict):
    threads: int = Field(default=1, ge=1)
    runs: int = Field(default=30, ge=3)  # timed batch-1 runs per model (batch-32 uses a third)


class ComputeConfig(Strict):
    """Torch threads for the teacher's fine-tune and for each student's chain, the same however
    the recipe runs: training's float sums follow the thread count, so fixing it (with a seed per
    student) makes a run in one process and one fanned out on Ray build the same bundles. A Ray
    task of a student's chain asks for this many CPUs."""

    threads: int = Field(default=2, ge=1, le=256)


class Recipe(Strict):
    name: str
    seed: int = 13
    data: DataConfig = DataConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    teacher: TeacherConfig = TeacherConfig()
    students: list[StudentConfig] = Field(min_length=1)
    export: ExportConfig = ExportConfig()
    measure: MeasureConfig = MeasureConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _unique_student_names(self) -> Recipe:
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"students: names must be unique, got {names}")
        return self


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe; relative paths inside it resolve against its folder."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping at the top level")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"recipe {path}: {_first_problem(exc)}") from exc
    return _resolve_paths(recipe, path.parent)


def select_students(recipe: Recipe, only: Sequence[str]) -> list[StudentConfig]:
    """The recipe's students named in `only` (all when empty), in recipe order; an unknown
    name is a RecipeError before anything runs. Every stage's key depends only on its own
    chain, so a partial run's bundles are the ones a full run reuses."""
    names = [s.name for s in recipe.students]
    if unknown := [name for name in only if name not in names]:
        raise RecipeError(f"student {unknown[0]!r} is not in recipe {recipe.name} (its students: {', '.join(names)})")
    return [s for s in recipe.students if not only or s.name in only]


def _first_problem(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{where}: {err['msg']}")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    data = recipe.data.model_copy(
        update={
            "path": resolve(recipe.data.path),
            "transfer": recipe.data.transfer.model_copy(
                update={"paths": [resolve(p) for p in recipe.data.transfer.paths]}
            ),
        }
    )
    teacher = recipe.teacher.model_copy(
        update={"path": resolve(recipe.teacher.path), "tokenizer": resolve(recipe.teacher.tokenizer)}
    )
    students = [
        s.model_copy(update={"architecture": s.architecture.model_copy(update={"path": resolve(s.architecture.path)})})
        if isinstance(s.architecture, PretrainedArchitecture)
        else s
        for s in recipe.students
    ]
    return recipe.model_copy(update={"data": data, "teacher": teacher, "students": students})
