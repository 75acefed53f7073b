"""The smoke test before stage 0: do the served models answer like their registered selves?

Every bundle records, when it is registered, its own top-1 answers on the first validation
texts with their labels (compression/registry.py, `RecordedAnswers`). Before a rollout's first
stage the controller's wrapper sends those texts through the *served* teacher and student (the
deployments, their tokenizer and runtime, as traffic will reach them) and hands the answers to
`judge_smoke`. What can differ between a registered model and a served one is exactly what
this catches: a tokenizer or runtime that preprocesses differently, a bundle swapped or
corrupted on the way, the knowledge lost in conversion. Each model must answer at least
1 - `tolerance` of the inputs as recorded, its accuracy on them must stay within `tolerance`
of the recorded accuracy, and so must the two models' agreement. A failed smoke test never
reaches stage 0: the rollout is rolled back, and the event says by how much each differed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

_RECORD = ConfigDict(frozen=True, extra="forbid")


class Recorded(BaseModel):
    """One model's recorded answers (labels and top-1 predictions by input), as the registry has them."""

    model_config = _RECORD

    model_id: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    predictions: tuple[int, ...]


class SmokeResult(BaseModel):
    """The smoke test's verdict and the numbers behind it."""

    model_config = _RECORD

    passed: bool
    skipped: bool = False  # a bundle without recorded answers: nothing to compare (registered earlier)
    inputs: int = 0
    figures: dict[str, float] = Field(default_factory=dict)  # matched_<variant>, accuracy_<variant>, agreement...
    message: str


def skipped(model_id: str) -> SmokeResult:
    message = f"smoke test skipped: bundle {model_id} has no recorded answers (registered before they were kept)"
    return SmokeResult(passed=True, skipped=True, message=message)


def judge_smoke(
    tolerance: float,
    teacher: Recorded,
    student: Recorded,
    teacher_served: Sequence[int],
    student_served: Sequence[int],
) -> SmokeResult:
    """Compare the served answers with the recorded ones (module docstring); the two records
    must be of the same texts (one recipe's validation split), which the models' pairing implies."""
    if teacher.texts != student.texts:
        message = f"smoke test failed: {teacher.model_id} and {student.model_id} recorded different inputs"
        return SmokeResult(passed=False, message=message)
    n = len(teacher.texts)
    figures: dict[str, float] = {}
    failures: list[str] = []
    for name, record, served in (("teacher", teacher, teacher_served), ("student", student, student_served)):
        matched = _share(served, record.predictions)
        accuracy, registered = _share(served, record.labels), _share(record.predictions, record.labels)
        figures |= {f"matched_{name}": matched, f"accuracy_{name}": accuracy, f"registered_accuracy_{name}": registered}
        if 1.0 - matched > tolerance:
            failures.append(f"the served {name} ({record.model_id}) answered {1.0 - matched:.1%} of {n} inputs "
                            f"unlike its registered self (tolerance {tolerance:.1%})")  # fmt: skip
        if abs(accuracy - registered) > tolerance:
            failures.append(f"the served {name}'s accuracy {accuracy:.4f} vs {registered:.4f} registered")
    agreement, registered = _share(student_served, teacher_served), _share(student.predictions, teacher.predictions)
    figures |= {"agreement": agreement, "registered_agreement": registered}
    if abs(agreement - registered) > tolerance:
        failures.append(f"the served models agree on {agreement:.4f} of the inputs vs {registered:.4f} registered")
    summary = (
        f"student answered {figures['matched_student']:.1%} and teacher {figures['matched_teacher']:.1%} of {n} "
        f"recorded inputs as registered; accuracy student {figures['accuracy_student']:.4f} "
        f"(registered {figures['registered_accuracy_student']:.4f}), teacher {figures['accuracy_teacher']:.4f} "
        f"({figures['registered_accuracy_teacher']:.4f}); agreement {agreement:.4f} ({registered:.4f})"
    )
    if failures:
        return SmokeResult(passed=False, inputs=n, figures=figures, message="smoke test failed: " + "; ".join(failures))
    return SmokeResult(passed=True, inputs=n, figures=figures, message=f"smoke test passed: {summary}")


def _share(a: Sequence[int], b: Sequence[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else 1.0
