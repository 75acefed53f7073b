"""The stages of a recipe. Each builds one bundle from its parent, validates it against the
parent, and registers it; each is skipped when a bundle with the same stage key exists, and a
student's stage whose key breached its tolerance before reports that breach again untrained."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compression.context import Context
from compression.distill import TrainingSet, sweep, train
from compression.errors import StudentSpecError, TeacherLoadError, ToleranceError
from compression.models import (
    Classifier,
    EncoderClassifier,
    bag_of_embeddings,
    count_parameters,
    cut_layers,
    fresh_transformer,
    load_hf_teacher,
    load_pretrained,
    save_model,
)
from compression.onnx_runtime import export_onnx, measure_latency, predict
from compression.packaged import MINILM_PACKAGE, encoder_dir
from compression.prune import prune
from compression.qat import export_qdq, wrap_linears
from compression.quantize import quantize
from compression.recipe import (
    DEFAULT_PACKAGED,
    DistillConfig,
    LayersArchitecture,
    PretrainedArchitecture,
    StudentConfig,
    TeacherConfig,
    Tolerance,
    TransformerArchitecture,
)
from compression.registry import (
    ANSWERS_FILE,
    MODEL_FILE,
    RECORDED_ANSWERS,
    TOKENIZER_DIR,
    TORCH_DIR,
    Bundle,
    Metrics,
    Preprocessing,
    RecordedAnswers,
)
from compression.runtime import session
from compression.text import load_tokenizer
from compression.validate import ParentCheck, check_against_parent
from compression.vocabulary import kept_ids, trim_embeddings, trimmed_tokenizer


def stage_key(ctx: Context, stage: str, parent: str, settings: Any, data: str | None = None) -> str:
    payload = {
        "stage": stage, "parent": parent, "settings": settings, "data": data or ctx.corpus.data_hash,
        "seed": ctx.recipe.seed, "max_length": ctx.max_length, "export": ctx.recipe.export.model_dump(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def teacher_stage(ctx: Context) -> Bundle:
    config = ctx.recipe.teacher
    source, settings = _teacher_source(config), _teacher_settings(config)
    key = stage_key(ctx, "teacher", source, settings, ctx.corpus.labelled_hash)
    # A teacher registered while its key still covered transfer text is found by that key too.
    if existing := ctx.registry.find_stage(key) or ctx.registry.find_stage(stage_key(ctx, "teacher", source, settings)):
        return existing
    with ctx.registry.staging() as staging:
        if config.kind == "onnx":
            params, training = _copy_onnx_teacher(config.path, staging / MODEL_FILE), {}
        else:
            model = load_hf_teacher(config.path or encoder_dir(config.packaged), len(ctx.corpus.label_names))
            freeze(model, config.fine_tune.freeze_layers)
            data = TrainingSet(ctx.encoded("train"), ctx.corpus.train.labels)
            tune = DistillConfig(
                **config.fine_tune.model_dump(exclude={"freeze_layers"}), alpha=0.0
            )  # labels only: no teacher yet
            result = train(model, data, _validation(ctx), tune, ctx.rng("teacher"), "fine-tune teacher")
            _save_artifacts(ctx, model, staging)
            params, training = count_parameters(model), {"validation_accuracy_per_epoch": result.history}
        ctx.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        metrics = _measure(ctx, staging, ctx.max_length, params, teacher=None, check=None)
        identity = {"name": config.name, "role": "teacher", "stage": "teacher", "precision": "fp32"}
        return _register(ctx, staging, identity, None, None, key, metrics, training, ctx.max_length)


def distill_settings(student: StudentConfig) -> dict[str, Any]:
    """What a distilled student's stage key covers. Its name too: the name seeds the chain
    (pipeline._seed_torch, Context.rng), so two students alike but for their names train apart,
    and neither may stand for the other."""
    settings = student.model_dump(mode="json", include={"name", "architecture", "distill", "sweep", "max_length"})
    if student.vocabulary != "teacher":  # keys made before trimming existed stay as they were
        settings["vocabulary"] = student.vocabulary
    return settings | {"tolerance": student.tolerances.distill.model_dump()}


def distill_stage(ctx: Context, teacher: Bundle, student: StudentConfig) -> Bundle:
    key = stage_key(ctx, "distill", teacher.id, distill_settings(student))
    if existing := _registered(ctx, key):
        return existing
    data = _distillation_set(ctx, teacher, student)
    teacher_model = ctx.torch_model(teacher) if teacher.torch_path else None
    if teacher_model is not None and ctx.vocabulary is not None:
        teacher_model = trim_embeddings(teacher_model, ctx.vocabulary)
    make = lambda: make_student(teacher_model, student, len(ctx.corpus.label_names))  # noqa: E731
    config, training = student.distill, dict[str, Any]()
    with _remembering_breach(ctx, key):
        if student.sweep is not None:
            found = sweep(make, data, _validation(ctx), config, student.sweep, ctx.rng(student.name, "sweep"))
            config = config.model_copy(update={"temperature": found.temperature, "alpha": found.alpha})
            training["sweep"] = found.grid
        model = make()
        rng = ctx.rng(student.name, "distill")
        result = train(model, data, _validation(ctx), config, rng, f"distill {student.name}")
        training |= {"temperature": config.temperature, "alpha": config.alpha, "epochs_run": result.epochs_run,
                     "validation_accuracy_per_epoch": result.history}  # fmt: skip
        return _finish(ctx, model, student.name, "distill", teacher, teacher, key, training, student)


def prune_stage(ctx: Context, teacher: Bundle, parent: Bundle, student: StudentConfig) -> Bundle:
    assert student.prune is not None
    key = stage_key(ctx, "prune", parent.id, [student.prune.model_dump(), student.tolerances.prune.model_dump()])
    if existing := _registered(ctx, key):
        return existing
    model = ctx.torch_model(parent)
    data = _distillation_set(ctx, teacher, student)
    chosen: dict[str, Any] = {
        k: parent.manifest.training[k] for k in ("temperature", "alpha") if k in parent.manifest.training
    }
    distill = student.distill.model_copy(update=chosen)  # the sweep's winner, if one ran
    with _remembering_breach(ctx, key):
        result = prune(model, data, _validation(ctx), student.prune, distill, ctx.rng(student.name, "prune"))
        training = {"shapes_before": result.shapes_before, "shapes_after": result.shapes_after,
                    "validation_accuracy_per_step": result.validation_accuracy_per_step}  # fmt: skip
        return _finish(ctx, model, f"{student.name}-pruned", "prune", parent, teacher, key, training, student)


def quantize_stage(ctx: Context, teacher: Bundle, parent: Bundle, student: StudentConfig) -> Bundle:
    """Post-training INT8; if that breaches tolerance, quantization-aware distillation (QDQ)."""
    config = student.quantize
    assert config is not None
    unset = {flag for flag in ("optimize", "reduce_range") if not getattr(config, flag)}
    settings = config.model_dump(exclude=unset)  # keys made before these flags existed stay
    key = stage_key(ctx, "quantize", parent.id, [settings, student.tolerances.quantize.model_dump()])
    if existing := _registered(ctx, key):
        return existing
    max_length = parent.manifest.preprocessing.max_length
    with _remembering_breach(ctx, key), ctx.registry.staging() as staging:
        shutil.copytree(parent.path / TOKENIZER_DIR, staging / TOKENIZER_DIR)
        calibration = ctx.encoded("validation", max_length)
        fused = quantize(
            parent.model_path, staging / MODEL_FILE, config.mode, calibration, config.optimize, config.reduce_range
        )
        training: dict[str, Any] = {"mode": config.mode} | ({"fused": fused} if config.optimize else {})
        try:
            check = _check(ctx, staging, max_length, "quantize", parent, student.tolerances.quantize)
        except ToleranceError as breach:
            if not (config.qat_fallback and parent.torch_path):
                raise
            training = {"mode": "qat", "post_training_breach": str(breach)}
            training |= _quantization_aware(ctx, teacher, parent, student, staging / MODEL_FILE)
            check = _check(ctx, staging, max_length, "quantize", parent, student.tolerances.quantize)
        metrics = _measure(ctx, staging, max_length, parent.manifest.metrics.params, teacher, check)
        identity = {"name": f"{parent.manifest.name}-int8", "role": "student", "stage": "quantize", "precision": "int8"}
        return _register(ctx, staging, identity, parent, check, key, metrics, training, max_length)


class StageNotRegistered(Exception):
    """A stage an earlier run did not register, met where the context may only reuse."""


def _registered(ctx: Context, key: str) -> Bundle | None:
    """This stage's bundle from an earlier run, if any; a breach recorded for it is raised again
    without training (the key covers parent, settings, tolerances, data and seed)."""
    if existing := ctx.registry.find_stage(key):
        return existing
    if (breach := ctx.registry.find_breach(key)) is not None:
        raise ToleranceError(breach)
    if ctx.reuse_only:
        raise StageNotRegistered(key)
    return None


@contextmanager
def _remembering_breach(ctx: Context, key: str) -> Iterator[None]:
    """Record a breach under the stage's key, so a re-run of the recipe skips what would fail again."""
    try:
        yield
    except ToleranceError as breach:
        ctx.registry.record_breach(key, str(breach))
        raise


def _quantization_aware(
    ctx: Context, teacher: Bundle, parent: Bundle, student: StudentConfig, target: Path
) -> dict[str, Any]:
    """Distil the parent's own weights for a short pass under fake quantization, export QDQ."""
    assert student.quantize is not None
    model = wrap_linears(ctx.torch_model(parent), student.quantize.reduce_range)
    tune = student.distill.model_copy(update={"epochs": student.quantize.qat_epochs})
    data = _distillation_set(ctx, teacher, student)
    result = train(model, data, _validation(ctx), tune, ctx.rng(student.name, "qat"), f"QAT {student.name}")
    export_qdq(model, target, ctx.encoded("validation"), ctx.recipe.export.opset)
    return {"qat_validation_accuracy_per_epoch": result.history}


def _teacher_source(config: TeacherConfig) -> str:
    if config.path is not None:
        return str(config.path)
    return MINILM_PACKAGE if config.packaged == DEFAULT_PACKAGED else config.packaged  # the keys made before


def _teacher_settings(config: TeacherConfig) -> dict[str, Any]:
    """What the teacher's key hashes besides its source; settings added later enter it only when
    set, so registries built before them keep their teacher."""
    settings = config.model_dump(mode="json", exclude={"packaged"})
    if not config.fine_tune.freeze_layers:
        del settings["fine_tune"]["freeze_layers"]
    return settings


def freeze(model: EncoderClassifier, layers: int) -> None:
    """Keep the embeddings and the bottom `layers` encoder layers as they are (no gradients)."""
    if not layers:
        return
    for module in (model.encoder.embeddings, *model.layers[:layers]):
        for parameter in module.parameters():
            parameter.requires_grad = False


def student_context(ctx: Context, student: StudentConfig) -> Context:
    """The run's context as `student` reads text: in a pretrained student's own tokenizer, in the
    teacher's trimmed to the tokens the recipe's text uses (`vocabulary: corpus`), or as it is."""
    arch = student.architecture
    if isinstance(arch, PretrainedArchitecture):
        field = f"students.{student.name}.architecture.path"
        return ctx.with_tokenizer(load_tokenizer(pretrained_dir(arch), field))
    if student.vocabulary == "corpus":
        max_length = max(ctx.max_length, student.max_length or 0)
        kept = kept_ids(ctx.tokenizer, [ctx.encoded(split, max_length) for split in ("distill", "validation")])
        return ctx.with_tokenizer(trimmed_tokenizer(ctx.tokenizer, kept), vocabulary=kept)
    return ctx


def pretrained_dir(arch: PretrainedArchitecture) -> Path:
    """A pretrained student's encoder and tokenizer: its own folder, or the packaged one."""
    return arch.path or encoder_dir(str(arch.packaged))


def make_student(teacher: Classifier | None, student: StudentConfig, num_labels: int) -> Classifier:
    arch = student.architecture
    if isinstance(arch, PretrainedArchitecture):
        field = f"students.{student.name}.architecture"
        return load_pretrained(pretrained_dir(arch), num_labels, field)
    if not isinstance(teacher, EncoderClassifier):
        raise StudentSpecError(f"students.{student.name}: needs a Hugging Face teacher to copy weights from")
    if isinstance(arch, LayersArchitecture):
        return cut_layers(teacher, arch)
    if isinstance(arch, TransformerArchitecture):
        return fresh_transformer(teacher, arch)
    return bag_of_embeddings(teacher, arch)


def _distillation_set(ctx: Context, teacher: Bundle, student: StudentConfig) -> TrainingSet:
    data = TrainingSet(ctx.encoded("distill"), ctx.split("distill").labels, ctx.logits(teacher, "distill"))
    if student.distill.hidden_loss_weight > 0:  # the recipe refuses it for a bag of embeddings
        data.teacher_hidden = ctx.pooled_hidden(teacher, "distill")
        if isinstance(student.architecture, LayersArchitecture):  # each layer learns from its original
            data.layer_map = student.architecture.layers
    return data


def _validation(ctx: Context) -> tuple[Any, np.ndarray]:
    return ctx.encoded("validation"), ctx.corpus.validation.labels


def _finish(
    ctx: Context, model: Classifier, name: str, stage: str, parent: Bundle, teacher: Bundle,
    key: str, training: dict[str, Any], student: StudentConfig,
) -> Bundle:  # fmt: skip
    """Export an FP32 student, check it against its parent, measure it, register it."""
    max_length = student.max_length or ctx.max_length
    with ctx.registry.staging() as staging:
        _save_artifacts(ctx, model, staging)
        ctx.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        check = _check(ctx, staging, max_length, stage, parent, getattr(student.tolerances, stage))
        metrics = _measure(ctx, staging, max_length, count_parameters(model), teacher, check)
        identity = {"name": name, "role": "student", "stage": stage, "precision": "fp32"}
        return _register(ctx, staging, identity, parent, check, key, metrics, training, max_length)


def _save_artifacts(ctx: Context, model: Classifier, staging: Path) -> None:
    save_model(model, staging / TORCH_DIR)
    export_onnx(model, staging / MODEL_FILE, ctx.recipe.export, ctx.encoded("validation"))


def _check(
    ctx: Context, staging: Path, max_length: int, stage: str, parent: Bundle, tolerance: Tolerance
) -> ParentCheck:
    child = predict(session(staging / MODEL_FILE, threads=2), ctx.encoded("validation", max_length))
    return check_against_parent(
        stage, parent.id, child, ctx.logits(parent, "validation"), ctx.corpus.validation.labels, tolerance
    )


def _measure(
    ctx: Context, staging: Path, max_length: int, params: int, teacher: Bundle | None, check: ParentCheck | None
) -> Metrics:
    """Test accuracy, agreement with the teacher, latency and size; validation accuracy comes
    from the parent check when there was one (the same predictions)."""
    sess = session(staging / MODEL_FILE, threads=ctx.recipe.measure.threads)
    test = predict(sess, ctx.encoded("test", max_length))
    if check is None:
        validation = predict(sess, ctx.encoded("validation", max_length))
        validation_accuracy = float((validation.argmax(1) == ctx.corpus.validation.labels).mean())
    reference = test if teacher is None else ctx.logits(teacher, "test")
    latency = measure_latency(
        sess, ctx.encoded("test", max_length), ctx.recipe.measure.threads, ctx.recipe.measure.runs
    )
    return Metrics(
        test_accuracy=float((test.argmax(1) == ctx.corpus.test.labels).mean()),
        validation_accuracy=validation_accuracy if check is None else check.accuracy,
        agreement_with_teacher=float((test.argmax(1) == reference.argmax(1)).mean()),
        latency_ms=latency,
        size_bytes=(staging / MODEL_FILE).stat().st_size,
        params=params,
    )


def _register(
    ctx: Context, staging: Path, identity: dict[str, str], parent: Bundle | None, check: ParentCheck | None,
    key: str, metrics: Metrics, training: dict[str, Any], max_length: int,
) -> Bundle:  # fmt: skip
    _record_answers(ctx, staging, max_length)
    return ctx.registry.register(
        staging,
        identity | {
            "parents": [parent.id] if parent else [], "stage_key": key, "recipe_name": ctx.recipe.name,
            "recipe": ctx.recipe.model_dump(mode="json"), "data_hash": ctx.corpus.data_hash,
            "label_names": ctx.corpus.label_names, "preprocessing": Preprocessing(max_length=max_length),
            "metrics": metrics, "parent_check": check, "training": training,
        },
    )  # fmt: skip


def _record_answers(ctx: Context, staging: Path, max_length: int) -> None:
    """The bundle's own top-1 answers on the first validation texts, with their labels
    (`RecordedAnswers`): what the served model must answer again before a rollout starts."""
    validation = ctx.corpus.validation
    count = min(RECORDED_ANSWERS, len(validation))
    index = np.arange(count)
    logits = predict(session(staging / MODEL_FILE, threads=2), ctx.encoded("validation", max_length).subset(index))
    record = RecordedAnswers(
        split="validation",
        texts=validation.texts[:count],
        labels=validation.labels[:count].tolist(),
        predictions=logits.argmax(1).tolist(),
    )
    (staging / ANSWERS_FILE).write_text(record.model_dump_json())


def _copy_onnx_teacher(source: Path | None, target: Path) -> int:
    """Copy a user's ONNX classifier in, refusing one ONNX Runtime cannot load; returns its parameter count."""
    try:
        assert source is not None  # TeacherConfig requires it for kind onnx
        shutil.copyfile(source, target)
        session(target, threads=1)
        return int(sum(np.prod(t.dims) for t in onnx.load(str(target)).graph.initializer))
    except Exception as exc:
        raise TeacherLoadError(f"teacher.path {source} does not load as an ONNX model: {exc}") from exc
