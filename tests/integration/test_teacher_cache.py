"""The teacher's outputs are cached one row per text: a recipe that gains transfer text (here
augmented copies; a disagreement export is the other case) runs the real tiny teacher over the
new texts only, and the rows it had stored come back as they were."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline import open_context
from compression.recipe import AugmentConfig, load_recipe
from compression.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


def test_added_transfer_text_runs_the_teacher_over_the_new_texts_only(
    tiny_run: tuple[Registry, Any], tmp_path: Path
) -> None:
    shared, _ = tiny_run
    registry = Registry(tmp_path / "registry")  # the tiny teacher and its cache, copied in
    teacher = shared.get("teacher")
    shutil.copytree(teacher.path, registry.models / teacher.id)
    shutil.copytree(shared.root / "cache", registry.root / "cache")
    tiny = load_recipe(ROOT / "recipes" / "tiny.yaml")
    before = open_context(tiny, registry)
    stored = before.logits(teacher, "distill")
    assert before.forward_batches[teacher.id] == 0  # the tiny run stored them

    transfer = tiny.data.transfer.model_copy(update={"augment": AugmentConfig(copies=1, word_dropout=0.2)})
    grown = tiny.model_copy(update={"data": tiny.data.model_copy(update={"transfer": transfer})})
    after = open_context(grown, registry)
    logits = after.logits(teacher, "distill")
    added = len(after.split("distill")) - len(stored)
    assert added > 500 and after.forward_batches[teacher.id] == -(-added // 64)  # the new texts, once
    assert np.array_equal(logits[: len(stored)], stored)  # train and transfer texts first, as stored
    assert open_context(grown, registry).logits(teacher, "distill").shape == logits.shape
