"""A recipe's students side by side on Ray: `kdcanary compress RECIPE` (a local Ray) or
`--address HOST:PORT` (an existing cluster whose nodes see the same registry path and have
kdcanary installed).

The driver builds (or reuses) the teacher as `compress` does and reads every chain the registry
already holds whole (`registered_chain`: nothing to build, no Ray started for it). For the rest
it computes the teacher's logits on every split in shards, one Ray task per group of whole
batches: ONNX Runtime's output depends on which rows share a batch, not on the process or its
threads, so the cache holds the same arrays a one-process run computes. Then each student's
chain (`run_student`, the same function) runs as a task asking for the recipe's
`compute.threads` CPUs, with its own Context; each task's stages write bundles and cache
entries aside and rename them into place, so several writers stay correct. Progress: every
task reports its stage and step to a small actor, and the driver prints a line per student as
it moves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from compression import progress
from compression.context import Context, ShardPredict
from compression.errors import CompressionError
from compression.onnx_runtime import predict
from compression.pipeline import (
    RunSummary,
    StudentChain,
    build_teacher,
    open_context,
    registered_chain,
    run_student,
)
from compression.recipe import Recipe, StudentConfig, select_students
from compression.registry import Bundle, Registry
from compression.runtime import session
from compression.text import Encoded, batch_plan

SPLITS = ("distill", "validation", "test")  # what the chains read of the teacher
REPORT_EVERY_S = 1.0  # a task's step reports, at most (stage changes always go)


def compress_on_ray(
    recipe: Recipe,
    registry: Registry,
    only: Sequence[str] = (),
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """`compress`, with the teacher's logits sharded and the students' chains as Ray tasks. The
    teacher is built here (in this process either way), and a chain the registry already holds
    whole is read here too: a re-run with nothing to build starts no Ray."""
    students = select_students(recipe, only)
    ctx = open_context(recipe, registry)
    teacher = build_teacher(ctx)
    chains = {s.name: registered_chain(ctx, teacher, s) for s in students}
    if to_build := [s for s in students if chains[s.name] is None]:
        chains |= _chains_on_ray(ctx, teacher, to_build, address, echo)
    summary = RunSummary(teacher)
    summary.forward_batches = dict(ctx.forward_batches)
    for name, chain in chains.items():  # the recipe's order, not the order they finished in
        assert chain is not None
        summary.add(name, chain)
    return summary


def _chains_on_ray(
    ctx: Context, teacher: Bundle, students: list[StudentConfig], address: str | None, echo: Callable[[str], None]
) -> dict[str, StudentChain]:
    """The students' chains as Ray tasks, after the teacher's logits in shards; the forward
    batches they ran are added to `ctx`'s."""
    owned = not ray.is_initialized()
    if owned:  # a local Ray of this machine's CPUs, or the cluster at `address`
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    try:
        ctx.shard_predict = _sharded_predict(int(ray.cluster_resources().get("CPU", 1)))
        for split in SPLITS:
            ctx.logits(teacher, split)
        board = ProgressBoard.remote()  # type: ignore[attr-defined]
        chain = _student_chain.options(num_cpus=ctx.recipe.compute.threads)
        tasks = {s.name: chain.remote(ctx.recipe, ctx.registry.root, teacher.id, s.name, board) for s in students}
        results = _follow(tasks, board, echo)
    finally:
        if owned:
            ray.shutdown()
    chains: dict[str, StudentChain] = {}
    for name, (ids, breach, forward_batches) in results.items():
        chains[name] = StudentChain([ctx.registry.get(i) for i in ids], breach)
        ctx.forward_batches.update(forward_batches)
    return chains


def _sharded_predict(shards: int) -> ShardPredict:
    def run(model: Path, encoded: Encoded, batch_size: int) -> np.ndarray:
        """Whole batches of `predict`'s own plan (rows sorted by length) per shard: each shard's
        `predict` forms exactly those batches again, so the logits are bit for bit the same."""
        plan = batch_plan(encoded, batch_size)
        parts = np.array_split(np.arange(len(plan)), min(shards, len(plan)))
        groups = [np.concatenate([plan[i] for i in part]) for part in parts]
        pending = [_logits_shard.remote(str(model), encoded.subset(rows), batch_size) for rows in groups]
        out: np.ndarray | None = None
        for rows, logits in zip(groups, ray.get(pending), strict=True):
            out = np.zeros((len(encoded), logits.shape[1]), dtype=np.float32) if out is None else out
            out[rows] = logits
        assert out is not None, "no rows to predict"
        return out

    return run


@ray.remote(num_cpus=1)
def _logits_shard(model: str, encoded: Encoded, batch_size: int) -> np.ndarray:
    return predict(session(Path(model), threads=1), encoded, batch_size)


@ray.remote
def _student_chain(
    recipe: Recipe, root: Path, teacher_id: str, name: str, board: Any
) -> tuple[list[str], str | None, dict[str, int]]:
    """One student's chain in a task: (bundle ids, the breach that ended it, forward batches)."""
    ctx = open_context(recipe, Registry(root))
    (student,) = select_students(recipe, [name])
    progress.listen(_reporter(name, board))
    try:
        chain = run_student(ctx, ctx.registry.get(teacher_id), student)
    finally:
        progress.listen(None)
    return [b.id for b in chain.bundles], chain.breach, dict(ctx.forward_batches)


def _reporter(student: str, board: Any) -> progress.Reporter:
    return progress.throttled(lambda what, step, total: board.update.remote(student, what, step, total), REPORT_EVERY_S)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest (stage or loop, step, total) of every student's chain."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[str, int, int]] = {}

    def update(self, student: str, what: str, step: int, total: int) -> None:
        self._latest[student] = (what, step, total)

    def latest(self) -> dict[str, tuple[str, int, int]]:
        return dict(self._latest)


def _follow(tasks: dict[str, Any], board: Any, echo: Callable[[str], None]) -> dict[str, Any]:
    """Wait for every chain, echoing each student's progress when it changes."""
    names = {ref: name for name, ref in tasks.items()}
    results: dict[str, Any] = {}
    shown: dict[str, tuple[str, int, int]] = {}
    pending = list(names)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=REPORT_EVERY_S)
        for name, (what, step, total) in sorted(ray.get(board.latest.remote()).items()):
            if shown.get(name) != (what, step, total):
                shown[name] = (what, step, total)
                echo(f"  {name}: {what}" + (f" {step}/{total}" if total else ""))
        for ref in done:
            try:
                results[names[ref]] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # a chain's own error, as a run in one process says it
                raise (exc.cause if isinstance(exc.cause, CompressionError) else exc) from None
    return results
