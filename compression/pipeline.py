"""`kdcanary compress RECIPE`: teacher, then each student's chain distill → prune → quantize.

A stage whose output is already registered (same stage key) is skipped, so re-running a
recipe recomputes nothing. A tolerance breach ends that student's chain, is reported, and
the other students go on; the run then exits non-zero.

`compress` runs everything in this process; compression/fanout.py runs the same teacher and
the same `run_student` chains side by side as Ray tasks. Each chain seeds torch from the recipe's
seed and the student's name, and trains on the recipe's `compute.threads`, so both ways build
the same bundles (ids are hashes of the files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from compression import progress
from compression.context import Context
from compression.data import load_corpus
from compression.errors import StudentSpecError, ToleranceError
from compression.models import check_layer_cut, teacher_depth
from compression.packaged import encoder_dir
from compression.recipe import LayersArchitecture, PretrainedArchitecture, Recipe, StudentConfig, select_students
from compression.registry import Bundle, Registry
from compression.stages import (
    StageNotRegistered,
    distill_stage,
    pretrained_dir,
    prune_stage,
    quantize_stage,
    student_context,
    teacher_stage,
)
from compression.text import load_tokenizer
from compression.vocabulary import check_trimmable


@dataclass
class RunSummary:
    teacher: Bundle
    students: dict[str, list[Bundle]] = field(default_factory=dict)  # student name -> its chain
    breaches: dict[str, str] = field(default_factory=dict)  # student name -> tolerance error
    forward_batches: dict[str, int] = field(default_factory=dict)  # bundle id -> batches really run

    @property
    def teacher_forward_batches(self) -> int:
        return self.forward_batches.get(self.teacher.id, 0)

    @property
    def bundles(self) -> list[Bundle]:
        return [self.teacher] + [b for chain in self.students.values() for b in chain]

    def add(self, name: str, chain: StudentChain) -> None:
        self.students[name] = chain.bundles
        if chain.breach is not None:
            self.breaches[name] = chain.breach


@dataclass
class StudentChain:
    bundles: list[Bundle]  # distilled, then pruned, then quantized: as far as it got
    breach: str | None = None  # the tolerance error that ended it early


def compress(recipe: Recipe, registry: Registry, only: Sequence[str] = ()) -> RunSummary:
    """Build the teacher and every student of `recipe` (or only the students named in `only`)."""
    students = select_students(recipe, only)
    ctx = open_context(recipe, registry)
    summary = RunSummary(build_teacher(ctx))
    for student in students:
        summary.add(student.name, run_student(ctx, summary.teacher, student))
    summary.forward_batches = dict(ctx.forward_batches)
    return summary


def open_context(recipe: Recipe, registry: Registry) -> Context:
    """What every stage of a run shares (each Ray task of a fanned-out run opens its own)."""
    corpus = load_corpus(recipe.data, recipe.seed)
    field = "teacher.tokenizer" if recipe.teacher.kind == "onnx" else "teacher.path"
    tokenizer = load_tokenizer(_tokenizer_path(recipe), field)
    for student in recipe.students:  # before anything trains
        if student.vocabulary == "corpus":
            check_trimmable(tokenizer, f"students.{student.name}.vocabulary")
    check_students(recipe)
    return Context(recipe, corpus, registry, tokenizer)


def check_students(recipe: Recipe) -> None:
    """A pretrained student's folder must hold its tokenizer, students built from the teacher's
    weights need a Hugging Face teacher, and layer cuts need layers it has: said before anything
    trains (or a fanned-out run starts Ray), not by a chain."""
    for student in recipe.students:
        if isinstance(arch := student.architecture, PretrainedArchitecture):
            load_tokenizer(pretrained_dir(arch), f"students.{student.name}.architecture.path")
    copying = [s for s in recipe.students if not isinstance(s.architecture, PretrainedArchitecture)]
    if copying and recipe.teacher.kind == "onnx":
        raise StudentSpecError(f"students.{copying[0].name}: needs a Hugging Face teacher to copy weights from")
    cuts = [(s.name, s.architecture) for s in copying if isinstance(s.architecture, LayersArchitecture)]
    if cuts:
        depth = teacher_depth(_tokenizer_path(recipe))
        for name, layers in cuts:
            check_layer_cut(layers, depth, f"students.{name}.architecture.layers")


def build_teacher(ctx: Context) -> Bundle:
    _seed_torch(ctx.recipe, "teacher")
    progress.report("teacher")
    return teacher_stage(ctx)


def run_student(ctx: Context, teacher: Bundle, student: StudentConfig) -> StudentChain:
    """One student's chain, seeded and threaded as its recipe says, whichever process runs it."""
    _seed_torch(ctx.recipe, student.name)
    ctx = student_context(ctx, student)  # its every split and bundle in its own tokens
    chain = StudentChain([])
    try:
        progress.report("distill")
        chain.bundles.append(distill_stage(ctx, teacher, student))
        if student.prune is not None:
            progress.report("prune")
            chain.bundles.append(prune_stage(ctx, teacher, chain.bundles[-1], student))
        if student.quantize is not None:
            progress.report("quantize")
            chain.bundles.append(quantize_stage(ctx, teacher, chain.bundles[-1], student))
    except ToleranceError as exc:
        chain.breach = str(exc)
    progress.report("breached" if chain.breach else "done")
    return chain


def registered_chain(ctx: Context, teacher: Bundle, student: StudentConfig) -> StudentChain | None:
    """The student's chain as earlier runs left it (its bundles, or the breach recorded for a
    stage), building nothing; None while a stage of it is still to build."""
    try:
        return run_student(replace(ctx, reuse_only=True), teacher, student)
    except StageNotRegistered:
        return None


def _seed_torch(recipe: Recipe, salt: str) -> None:
    """The teacher keeps the recipe's seed; each student draws its own from it and its name, so
    its initial weights do not depend on which students ran before it, or where."""
    seed = (
        recipe.seed if salt == "teacher" else int(hashlib.sha256(f"{recipe.seed}:{salt}".encode()).hexdigest()[:8], 16)
    )
    torch.manual_seed(seed)
    torch.set_num_threads(recipe.compute.threads)


def _tokenizer_path(recipe: Recipe) -> Path:
    if recipe.teacher.kind == "onnx":
        assert recipe.teacher.tokenizer is not None
        return recipe.teacher.tokenizer
    return recipe.teacher.path or encoder_dir(recipe.teacher.packaged)
