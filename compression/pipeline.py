"""`kdcanary compress RECIPE`: teacher, then each student's chain distill → prune → quantize.

A stage whose output is already registered (same stage key) is skipped, so re-running a
recipe recomputes nothing. A tolerance breach ends that student's chain, is reported, and
the other students go on; the run then exits non-zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compression.context import Context
from compression.data import load_corpus
from compression.errors import ToleranceError
from compression.recipe import Recipe, StudentConfig, select_students
from compression.registry import Bundle, Registry
from compression.stages import default_teacher_path, distill_stage, prune_stage, quantize_stage, teacher_stage
from compression.text import load_tokenizer


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


def compress(recipe: Recipe, registry: Registry, only: Sequence[str] = ()) -> RunSummary:
    """Build the teacher and every student of `recipe` (or only the students named in `only`)."""
    students = select_students(recipe, only)
    torch.manual_seed(recipe.seed)  # seeds are set once, here; stages draw from ctx.rng(...)
    corpus = load_corpus(recipe.data, recipe.seed)
    field = "teacher.tokenizer" if recipe.teacher.kind == "onnx" else "teacher.path"
    ctx = Context(recipe, corpus, registry, load_tokenizer(_tokenizer_path(recipe), field))
    summary = RunSummary(teacher_stage(ctx))
    for student in students:
        chain: list[Bundle] = []
        try:
            _run_chain(ctx, summary.teacher, student, chain)
        except ToleranceError as exc:
            summary.breaches[student.name] = str(exc)
        summary.students[student.name] = chain
    summary.forward_batches = dict(ctx.forward_batches)
    return summary


def _run_chain(ctx: Context, teacher: Bundle, student: StudentConfig, chain: list[Bundle]) -> None:
    chain.append(distill_stage(ctx, teacher, student))
    if student.prune is not None:
        chain.append(prune_stage(ctx, teacher, chain[-1], student))
    if student.quantize is not None:
        chain.append(quantize_stage(ctx, teacher, chain[-1], student))


def _tokenizer_path(recipe: Recipe) -> Path:
    if recipe.teacher.kind == "onnx":
        assert recipe.teacher.tokenizer is not None
        return recipe.teacher.tokenizer
    return recipe.teacher.path or default_teacher_path()
