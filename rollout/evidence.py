"""What the controller knows about each model: mergeable aggregates of router observations.

Routers send `Observation`s in batches; the controller folds them in with
`add_observations(evidence, batch, now)` and hands the result to `policy.decide`. Every
function here is pure (new value out, nothing mutated), so a tick is reproducible from its
inputs, and every model is pydantic so the controller may persist evidence next to the status.

What is kept per stage and what pools forward (the `epoch` of the status decides):

- Agreement and accuracy pool across all stages, shadow included. Whether the student answers like the
  teacher does not depend on how much traffic it takes (same student, same traffic), so the
  evidence stays valid and keeps accumulating: the confidence sequence keeps tightening
  instead of restarting at every stage.
- Errors, latency and cost are kept twice. `student` and `teacher` restart whenever the
  published weight changes (`rollover`): they may depend on load (at 5 % the student's batches
  flush on timeouts and its replicas idle, at 50 % they queue), and a stage's own evidence is
  what shows a heavier stage breaking something a lighter one did not. `pooled_student` and
  `pooled_teacher` never restart: under the spec's `pool_stages` (the default) the error and
  latency gates may pass on them. Their bounds hold when the student's error rate and latency
  do not depend on the stage (same student, same traffic, replicas provisioned for the load:
  what autoscaling is for); where that fails, the stage's own evidence still fails the gate
  (gates.py, `_pooled`). Without pooling each stage must show its own ~1,500 samples, the
  evidence a p99 bound and a 1-point error margin need, whatever `min_requests` says.
- Labels (`add_labels`) arrive late, through feedback: whether an answer was right depends on
  the model and the input, not on the load it was served under, so accuracy pools like
  agreement, whatever stage the answer was given in.
- The fast-rollback window is time-based and survives rollovers: a burst of failures right
  after a promotion is exactly what it exists to catch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from rollout.disagreements import Disagreement
from rollout.latency import LatencyHistogram, histogram_of, merge_histograms
from rollout.watch import ACCURACY, ACCURACY_LOSS, AGREEMENT, WatchState, feed

RECENT_RETENTION_S = 60
"""Seconds of per-second student counts kept for the fast-rollback window (its maximum)."""

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Variant(StrEnum):
    """Which model served (or shadow-answered) a request."""

    TEACHER = "teacher"
    STUDENT = "student"


class PairedAnswers(BaseModel):
    """Both models' top-1 label ids, per input, for one request both answered."""

    model_config = _FROZEN

    request_id: str = Field(min_length=1, max_length=64)
    teacher: tuple[int, ...]
    student: tuple[int, ...]


class Observation(BaseModel):
    """One answer from one model, as a router saw it.

    `agreed` is set on one observation of a pair whose input both models answered (by
    convention the student's); leave it None otherwise, or the pair counts twice. A timeout
    is an error. `cost` is in whatever unit the cost gate compares (compute seconds, dollars).
    `model_id` is the bundle that answered (or was asked), so a controller can drop observations
    of a model that is no longer part of its pair; None when unknown.
    """

    model_config = _FROZEN

    variant: Variant
    latency_s: float = Field(ge=0.0)
    error: bool = False
    cost: float = Field(default=0.0, ge=0.0)
    agreed: bool | None = None
    model_id: str | None = None
    # Per compared input of a shadowed pair (on the student's observation, as `agreed`): the
    # teacher's top-1 label and whether the student's matched it, for the per-class guard.
    by_class: tuple[tuple[str, bool], ...] = ()
    # Both models' top-1 label ids for a shadowed request, kept by the controller until feedback
    # for `request_id` arrives (on the student's observation, as `agreed`).
    answers: PairedAnswers | None = None
    # The request's segment: one the spec declares, or "other"; None when the spec declares none.
    segment: str | None = None
    # Inputs of a shadowed request the models answered differently, for the disagreement log
    # (on the student's observation; only while the spec keeps one).
    disagreements: tuple[Disagreement, ...] = ()


class VariantStats(BaseModel):
    """One model's requests, errors, cost and latency since the current epoch began."""

    model_config = _FROZEN

    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    cost_total: float = Field(default=0.0, ge=0.0)
    latency: LatencyHistogram = Field(default_factory=LatencyHistogram)


def merge_stats(a: VariantStats, b: VariantStats) -> VariantStats:
    """Sum of two aggregates (associative and commutative, so routers may pre-aggregate)."""
    return VariantStats(
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        cost_total=a.cost_total + b.cost_total,
        latency=merge_histograms(a.latency, b.latency),
    )


class Agreement(BaseModel):
    """Paired answers compared so far, pooled across stages: `agreed` out of `compared`."""

    model_config = _FROZEN

    agreed: int = Field(default=0, ge=0)
    compared: int = Field(default=0, ge=0)


class Accuracy(BaseModel):
    """Labelled answers so far (feedback), pooled across stages.

    Served: per variant, answers that came back with a label, and how many were right.
    Paired: labelled inputs both models answered (shadowed), by who was right.
    """

    model_config = _FROZEN

    student_labelled: int = Field(default=0, ge=0)
    student_correct: int = Field(default=0, ge=0)
    teacher_labelled: int = Field(default=0, ge=0)
    teacher_correct: int = Field(default=0, ge=0)
    both_right: int = Field(default=0, ge=0)
    both_wrong: int = Field(default=0, ge=0)
    only_student: int = Field(default=0, ge=0)
    only_teacher: int = Field(default=0, ge=0)

    @property
    def labelled(self) -> int:
        return self.student_labelled + self.teacher_labelled

    @property
    def paired(self) -> int:
        return self.both_right + self.both_wrong + self.only_student + self.only_teacher


class LabelOutcome(BaseModel):
    """One labelled input: the variant whose answer was served and whether it was right; for a
    shadowed input also (teacher right, student right)."""

    model_config = _FROZEN

    served: Variant
    correct: bool
    paired: tuple[bool, bool] | None = None
    segment: str | None = None  # the request's segment, as its receipt says


class Segment(BaseModel):
    """One declared segment's evidence, pooled like the overall agreement and accuracy."""

    model_config = _FROZEN

    agreement: Agreement = Field(default_factory=Agreement)
    accuracy: Accuracy = Field(default_factory=Accuracy)


class RecentWindow(BaseModel):
    """The student's recent failures, for the fast-rollback trip wire.

    `per_second` maps a whole second of controller time to [requests, errors];
    `consecutive_errors` is the current run of student errors with no success in between.
    """

    model_config = _FROZEN

    per_second: dict[int, tuple[int, int]] = Field(default_factory=dict)
    consecutive_errors: int = Field(default=0, ge=0)

    def totals(self, now: float, window_s: float) -> tuple[int, int]:
        """(requests, errors) in the whole seconds that overlap [now - window_s, now]."""
        start = math.floor(now - window_s)
        pairs = [pair for second, pair in self.per_second.items() if start <= second <= now]
        return sum(r for r, _ in pairs), sum(e for _, e in pairs)


class Evidence(BaseModel):
    """Everything the gates read. `epoch` names the status epoch the per-stage parts belong to."""

    model_config = _FROZEN

    epoch: int = Field(default=0, ge=0)
    student: VariantStats = Field(default_factory=VariantStats)
    teacher: VariantStats = Field(default_factory=VariantStats)
    pooled_student: VariantStats = Field(default_factory=VariantStats)  # every stage's, never restarted
    pooled_teacher: VariantStats = Field(default_factory=VariantStats)
    agreement: Agreement = Field(default_factory=Agreement)
    recent: RecentWindow = Field(default_factory=RecentWindow)
    # Agreement per teacher label, pooled across stages like `agreement` (same student, same traffic).
    classes: dict[str, Agreement] = Field(default_factory=dict)
    accuracy: Accuracy = Field(default_factory=Accuracy)
    # Agreement and accuracy per segment the request declared ("other" for undeclared ones).
    segments: dict[str, Segment] = Field(default_factory=dict)
    # The change detectors of a promoted student (rollout/watch.py); None before the watch.
    watch: WatchState | None = None


def rollover(evidence: Evidence, epoch: int) -> Evidence:
    """Evidence for `epoch`: per-stage parts restart when the epoch changed, pooled parts stay.

    Idempotent, so the controller can call it after every tick with the new status's epoch.
    """
    if evidence.epoch == epoch:
        return evidence
    pooled = {"agreement", "recent", "classes", "accuracy", "segments", "pooled_student", "pooled_teacher", "watch"}
    return Evidence(epoch=epoch, **{name: getattr(evidence, name) for name in pooled})


def _stats_of(observations: Sequence[Observation]) -> VariantStats:
    return VariantStats(
        requests=len(observations),
        errors=sum(o.error for o in observations),
        cost_total=sum(o.cost for o in observations),
        latency=histogram_of(o.latency_s for o in observations),
    )


def _advance_window(window: RecentWindow, students: Sequence[Observation], now: float) -> RecentWindow:
    second = math.floor(now)
    kept = {s: pair for s, pair in window.per_second.items() if s > second - RECENT_RETENTION_S}
    requests, errors = kept.get(second, (0, 0))
    streak = window.consecutive_errors
    for observation in students:
        streak = streak + 1 if observation.error else 0
    if students:
        errors_now = sum(o.error for o in students)
        kept[second] = (requests + len(students), errors + errors_now)
    return RecentWindow(per_second=kept, consecutive_errors=streak)


def _add_classes(classes: dict[str, Agreement], batch: Sequence[Observation]) -> dict[str, Agreement]:
    pairs = [pair for observation in batch for pair in observation.by_class]
    if not pairs:
        return classes
    counts = {label: [a.agreed, a.compared] for label, a in classes.items()}
    for label, agreed in pairs:
        count = counts.setdefault(label, [0, 0])
        count[0] += agreed
        count[1] += 1
    return {label: Agreement(agreed=agreed, compared=compared) for label, (agreed, compared) in counts.items()}


def _add_segment_agreement(segments: dict[str, Segment], batch: Sequence[Observation]) -> dict[str, Segment]:
    paired = [(o.segment, o.agreed) for o in batch if o.segment is not None and o.agreed is not None]
    if not paired:
        return segments
    counts = {name: [s.agreement.agreed, s.agreement.compared] for name, s in segments.items()}
    for name, agreed in paired:
        count = counts.setdefault(name, [0, 0])
        count[0] += agreed
        count[1] += 1
    return {
        name: segments.get(name, Segment()).model_copy(update={"agreement": Agreement(agreed=a, compared=n)})
        for name, (a, n) in counts.items()
    }


def add_observations(evidence: Evidence, observations: Iterable[Observation], now: float) -> Evidence:
    """Fold one batch in, in order; `now` (controller clock) timestamps the fast-rollback window."""
    batch = list(observations)
    students = [o for o in batch if o.variant is Variant.STUDENT]
    teachers = [o for o in batch if o.variant is Variant.TEACHER]
    paired = [o.agreed for o in batch if o.agreed is not None]
    agreement = Agreement(
        agreed=evidence.agreement.agreed + sum(paired),
        compared=evidence.agreement.compared + len(paired),
    )
    update = {
        "classes": _add_classes(evidence.classes, batch),
        "segments": _add_segment_agreement(evidence.segments, batch),
        "student": merge_stats(evidence.student, student_stats := _stats_of(students)),
        "teacher": merge_stats(evidence.teacher, teacher_stats := _stats_of(teachers)),
        "pooled_student": merge_stats(evidence.pooled_student, student_stats),
        "pooled_teacher": merge_stats(evidence.pooled_teacher, teacher_stats),
        "agreement": agreement,
        "recent": _advance_window(evidence.recent, students, now),
    }
    if evidence.watch is not None:
        update["watch"] = feed(evidence.watch, _watched_answers(batch))
    return evidence.model_copy(update=update)


def _watched_answers(batch: Sequence[Observation]) -> Iterator[tuple[str, float]]:
    """The watch's events of a batch, in order: every compared pair's disagreement, overall, by
    the teacher's class and by segment."""
    for observation in batch:
        if observation.agreed is None:
            continue
        yield AGREEMENT, float(not observation.agreed)
        for label, matched in observation.by_class:
            yield f"class:{label}", float(not matched)
        if observation.segment is not None:
            yield f"segment:{observation.segment}", float(not observation.agreed)


def _count_labels(accuracy: Accuracy, outcomes: Sequence[LabelOutcome]) -> Accuracy:
    counts = accuracy.model_dump()
    for outcome in outcomes:
        counts[f"{outcome.served.value}_labelled"] += 1
        counts[f"{outcome.served.value}_correct"] += outcome.correct
        if outcome.paired is not None:
            key = {(True, True): "both_right", (False, False): "both_wrong", (False, True): "only_student"}
            counts[key.get(outcome.paired, "only_teacher")] += 1
    return Accuracy(**counts)


def add_labels(evidence: Evidence, outcomes: Iterable[LabelOutcome]) -> Evidence:
    """Fold labelled inputs (from feedback) into the pooled accuracy counts, overall and per segment."""
    batch = list(outcomes)
    segments = dict(evidence.segments)
    for name in {o.segment for o in batch if o.segment is not None}:
        segment = segments.get(name, Segment())
        accuracy = _count_labels(segment.accuracy, [o for o in batch if o.segment == name])
        segments[name] = segment.model_copy(update={"accuracy": accuracy})
    update: dict[str, object] = {"accuracy": _count_labels(evidence.accuracy, batch), "segments": segments}
    if evidence.watch is not None:
        losses = [(ACCURACY, ACCURACY_LOSS[o.paired]) for o in batch if o.paired is not None]
        update["watch"] = feed(evidence.watch, losses)
    return evidence.model_copy(update=update)
