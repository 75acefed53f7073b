"""Gates: evidence in, a verdict with its numbers out (no clients, no clock, no side effects).

Modelled on Argo Rollouts' `assessMetricStatus`: each gate only reads the aggregates it is
handed. Three verdicts, and no data is always INCONCLUSIVE, never a pass or a fail. A verdict
is a claim the confidence sequence supports at the gate's alpha: PASS when the whole interval
lies on the good side of the threshold, FAIL when the whole interval lies on the bad side,
INCONCLUSIVE while it straddles. Every message carries n, estimate, bounds and threshold.

A result is `binding` unless the spec's combination rule set it aside (accuracy deciding in
place of agreement, see `spec.AccuracyGate`): such a result is shown, and moves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from rollout.evidence import Accuracy, Agreement, Evidence, LatencyHistogram, VariantStats
from rollout.spec import (
    AccuracyGate,
    AgreementGate,
    ClassAgreementGuard,
    CostGate,
    ErrorGate,
    FastRollback,
    LatencyGate,
    RolloutSpec,
    SegmentGuard,
)
from rollout.stats import (
    Interval,
    bernoulli_cs,
    difference_cs,
    paired_difference_cs,
    quantile_cs,
    quantile_estimate,
    quantile_ratio_cs,
)

P99 = 0.99


class Verdict(StrEnum):
    """A gate's outcome."""

    PASS = "pass"  # the bound clears the threshold: this gate allows advancing
    FAIL = "fail"  # the bound is on the wrong side of the threshold: roll back
    INCONCLUSIVE = "inconclusive"  # not enough evidence either way (always so without data)


class GateResult(BaseModel):
    """One gate's verdict and the numbers behind it; bounds are None where unbounded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    verdict: Verdict
    n: int
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    threshold: float
    message: str
    binding: bool = True  # False: shown, but the spec's combination rule sets it aside

    @property
    def blocks(self) -> bool:
        """An inconclusive binding result: the stage waits for it."""
        return self.binding and self.verdict is Verdict.INCONCLUSIVE

    @property
    def fails(self) -> bool:
        """A failing binding result: the rollout rolls back."""
        return self.binding and self.verdict is Verdict.FAIL


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value


def _judge(lower: float, upper: float, threshold: float, higher_is_better: bool) -> Verdict:
    good, bad = (lower >= threshold, upper < threshold)
    if not higher_is_better:
        good, bad = (upper <= threshold, lower > threshold)
    if good:
        return Verdict.PASS
    return Verdict.FAIL if bad else Verdict.INCONCLUSIVE


def agreement_gate(gate: AgreementGate, evidence: Evidence) -> GateResult:
    """Agreement rate >= threshold, by Robbins' mixture sequence on the pooled paired answers."""
    agreed, n = evidence.agreement.agreed, evidence.agreement.compared
    if n == 0:
        return GateResult(
            name="agreement",
            verdict=Verdict.INCONCLUSIVE,
            n=0,
            threshold=gate.threshold,
            message=f"agreement: no paired answers yet (n=0), threshold {gate.threshold:.4f}",
        )
    cs = bernoulli_cs(agreed, n, gate.alpha)
    verdict = _judge(cs.lower, cs.upper, gate.threshold, higher_is_better=True)
    relation = {Verdict.PASS: "lower bound >=", Verdict.FAIL: "upper bound <"}.get(verdict, "bounds straddle")
    message = (
        f"agreement {relation} threshold {gate.threshold:.4f}: estimate {agreed / n:.4f} "
        f"({agreed}/{n}), bounds [{cs.lower:.4f}, {cs.upper:.4f}] at alpha={gate.alpha:g}"
    )
    return GateResult(
        name="agreement",
        verdict=verdict,
        n=n,
        estimate=agreed / n,
        lower=cs.lower,
        upper=cs.upper,
        threshold=gate.threshold,
        message=message,
    )


def class_agreement_guard(gate: ClassAgreementGuard, evidence: Evidence) -> GateResult:
    """Agreement conditioned on the teacher's label, each class >= threshold (a guard: FAIL or PASS).

    Each class's Robbins sequence runs at alpha / K, K = max(declared classes, classes seen): a
    union bound over the classes, so the chance that any class fails falsely stays under alpha
    over the whole rollout. FAIL names the worst failing class and its numbers; with no paired
    answer yet the guard is INCONCLUSIVE; otherwise it PASSes (no class is shown below its
    threshold), leaving promotion to the overall agreement gate: a minority class needs many
    samples to be shown above a threshold, but few to be shown below one when it regresses.
    """
    classes = {label: counts for label, counts in evidence.classes.items() if counts.compared}
    alpha = gate.alpha / max(gate.classes, len(classes), 1)
    return _agreement_by("class", "agreement_by_class", classes, gate.threshold, alpha)


_PLURAL = {"class": "classes"}


def _agreement_by(kind: str, name: str, groups: dict[str, Agreement], threshold: float, alpha: float) -> GateResult:
    """The guard over per-group agreement (classes, segments), each group at `alpha`."""
    title = f"agreement by {kind}"
    if not groups:
        message = f"{title}: no paired answers yet, threshold {threshold:.4f}"
        return GateResult(name=name, verdict=Verdict.INCONCLUSIVE, n=0, threshold=threshold, message=message)
    bounds = {group: bernoulli_cs(c.agreed, c.compared, alpha) for group, c in sorted(groups.items())}
    failing = [group for group, cs in bounds.items() if cs.upper < threshold]
    shown = min(failing or bounds, key=lambda group: bounds[group].upper)  # the worst group
    counts, cs = groups[shown], bounds[shown]
    numbers = (
        f"{kind} '{shown}': agreement {counts.agreed / counts.compared:.4f} ({counts.agreed}/{counts.compared}), "
        f"bounds [{cs.lower:.4f}, {cs.upper:.4f}] at alpha={alpha:.3g}"
    )
    relation = "upper bound <" if failing else f"the lowest {kind}; none shown below"
    return GateResult(
        name=name,
        verdict=Verdict.FAIL if failing else Verdict.PASS,
        n=sum(c.compared for c in groups.values()),
        estimate=counts.agreed / counts.compared,
        lower=cs.lower,
        upper=cs.upper,
        threshold=threshold,
        message=f"{title}: {numbers}: {relation} {threshold:.4f} ({len(groups)} {_PLURAL.get(kind, kind + 's')})",
    )


def segment_guard(gate: SegmentGuard, evidence: Evidence) -> GateResult:
    """Agreement, and accuracy where labelled, per declared segment (a guard: FAIL or PASS).

    K sequences share alpha (spec.SegmentGuard): each segment's agreement, and its accuracy
    difference when `accuracy_margin` is set. FAIL names the worst failing segment (agreement
    before accuracy) with its numbers; no paired answer and no label yet is INCONCLUSIVE.
    """
    judged = gate.accuracy_margin is not None
    alpha = gate.alpha / (max(len(gate.names) + 1, len(evidence.segments)) * (2 if judged else 1))
    agreements = {name: s.agreement for name, s in evidence.segments.items() if s.agreement.compared}
    agreement = _agreement_by("segment", "segments", agreements, gate.threshold, alpha)
    if agreement.verdict is Verdict.FAIL or gate.accuracy_margin is None:
        return agreement
    threshold = -gate.accuracy_margin
    bounds = {name: b for name, s in evidence.segments.items() if (b := _accuracy_bounds(s.accuracy, alpha))}
    if not bounds:
        return agreement
    worst = min(sorted(bounds), key=lambda name: bounds[name][1].upper)
    acc, (estimate, cs) = evidence.segments[worst].accuracy, bounds[worst]
    failing = cs.upper < threshold
    if not failing and agreement.verdict is Verdict.PASS:
        return agreement
    relation = "upper bound <" if failing else "the lowest segment; none shown below"
    return GateResult(
        name="segments",
        verdict=Verdict.FAIL if failing else Verdict.PASS,
        n=acc.labelled,
        estimate=estimate,
        lower=cs.lower,
        upper=cs.upper,
        threshold=threshold,
        message=(
            f"accuracy by segment: segment '{worst}': student - teacher {estimate:+.4f}, "
            f"bounds [{cs.lower:+.4f}, {cs.upper:+.4f}] at alpha={alpha:.3g}: {relation} {threshold:+.4f} "
            f"({_accuracy_counts(acc)})"
        ),
    )


def accuracy_gate(gate: AccuracyGate, evidence: Evidence) -> GateResult:
    """Student minus teacher accuracy >= -margin on labelled answers (feedback), by
    `_accuracy_bounds`. Without labels it is INCONCLUSIVE."""
    acc, threshold = evidence.accuracy, -gate.margin
    judged = _accuracy_bounds(acc, gate.alpha)
    if judged is None:
        message = f"accuracy: no labelled answers to compare yet ({_accuracy_counts(acc)}), margin {gate.margin:.4f}"
        return GateResult(
            name="accuracy", verdict=Verdict.INCONCLUSIVE, n=acc.labelled, threshold=threshold, message=message
        )
    estimate, bounds = judged
    verdict = _judge(bounds.lower, bounds.upper, threshold, higher_is_better=True)
    relation = {Verdict.PASS: "lower bound >=", Verdict.FAIL: "upper bound <"}.get(verdict, "bounds straddle")
    message = (
        f"accuracy difference student - teacher {relation} {threshold:+.4f}: estimate {estimate:+.4f}, "
        f"bounds [{bounds.lower:+.4f}, {bounds.upper:+.4f}] at alpha={gate.alpha:g} ({_accuracy_counts(acc)})"
    )
    return GateResult(
        name="accuracy",
        verdict=verdict,
        n=acc.labelled,
        estimate=estimate,
        lower=bounds.lower,
        upper=bounds.upper,
        threshold=threshold,
        message=message,
    )


def _accuracy_bounds(acc: Accuracy, alpha: float) -> tuple[float, Interval] | None:
    """Student minus teacher accuracy: two confidence sequences for the same difference, alpha/2
    each, intersected (a union bound: both hold at once with probability >= 1 - alpha). The
    paired one on inputs both models answered (`stats.paired_difference_cs`: only the inputs
    where exactly one model was right carry information, so it needs far fewer labels when the
    models mostly agree), and the unpaired one on the answers each model served
    (`stats.difference_cs`), which covers stages where few requests are shadowed. None without
    anything to compare; else (the estimate, the interval)."""
    estimate = accuracy_difference(acc)
    bounds = []
    if acc.paired:
        bounds.append(paired_difference_cs(acc.only_student, acc.only_teacher, acc.paired, alpha / 2))
    if acc.student_labelled and acc.teacher_labelled:
        served = (acc.student_correct, acc.student_labelled, acc.teacher_correct, acc.teacher_labelled)
        bounds.append(difference_cs(*served, alpha / 2))
    if not bounds or estimate is None:
        return None
    return estimate, Interval(max(cs.lower for cs in bounds), min(cs.upper for cs in bounds))


def _accuracy_counts(acc: Accuracy) -> str:
    return (
        f"student {acc.student_correct}/{acc.student_labelled}, teacher {acc.teacher_correct}/{acc.teacher_labelled} "
        f"served; paired: {acc.only_student} only student right, {acc.only_teacher} only teacher right, "
        f"{acc.both_right} both right, {acc.both_wrong} both wrong"
    )


def accuracy_difference(acc: Accuracy) -> float | None:
    """Student minus teacher accuracy, estimated: the paired difference where pairs exist, else
    the served rates'; None while neither can be formed (exactly when `_accuracy_bounds` is None)."""
    if acc.paired:
        return (acc.only_student - acc.only_teacher) / acc.paired
    if acc.student_labelled and acc.teacher_labelled:
        return acc.student_correct / acc.student_labelled - acc.teacher_correct / acc.teacher_labelled
    return None


def combine_accuracy(gate: AccuracyGate, accuracy: GateResult, results: list[GateResult]) -> list[GateResult]:
    """Apply `gate.mode` to the accuracy result and the overall agreement gate among `results`
    (spec.AccuracyGate). The per-class guard is never set aside: an average proves nothing
    about a class."""
    if gate.mode == "also" or accuracy.verdict is Verdict.FAIL:
        return [*results, accuracy]
    labelled = accuracy.n
    if gate.mode == "guards" or labelled < gate.decides_after:  # accuracy may only fail
        note = " (a guard: binding only when it fails)"
        if gate.mode == "decides":
            note = f" (not binding before {gate.decides_after} labelled answers)"
        pending = accuracy.model_copy(update={"binding": False, "message": accuracy.message + note})
        if gate.mode == "guards" or labelled == 0:  # agreement guards as it would without labels
            return [*results, pending]
        waiting = f" (set aside: labels are arriving, {labelled} of the {gate.decides_after} that let accuracy decide)"
        return [*_set_aside(results, waiting, lambda r: r.verdict is Verdict.FAIL), pending]
    decided = accuracy.verdict is Verdict.PASS
    note = f" (set aside: accuracy {'passed' if decided else 'decides once it is conclusive'})"
    # A pass stays binding (harmless); accuracy passing outranks agreement, pending it outranks its failure.
    aside = _set_aside(
        results, note, lambda r: r.verdict is not Verdict.PASS and (decided or r.verdict is Verdict.FAIL)
    )
    return [*aside, accuracy]


def _set_aside(results: list[GateResult], note: str, which: Callable[[GateResult], bool]) -> list[GateResult]:
    """`results` with the overall agreement gate made non-binding (and `note` added) where `which` says."""
    return [
        r.model_copy(update={"binding": False, "message": r.message + note})
        if r.name == "agreement" and which(r)
        else r
        for r in results
    ]


def error_gate(gate: ErrorGate, evidence: Evidence) -> GateResult:
    """Student minus teacher error rate <= margin, by a union bound of two Robbins sequences."""
    student, teacher = evidence.student, evidence.teacher
    counts = f"student {student.errors}/{student.requests}, teacher {teacher.errors}/{teacher.requests}"
    if student.requests == 0 or teacher.requests == 0:
        return GateResult(
            name="errors",
            verdict=Verdict.INCONCLUSIVE,
            n=student.requests,
            threshold=gate.margin,
            message=f"errors: need requests from both models this stage ({counts})",
        )
    cs = difference_cs(student.errors, student.requests, teacher.errors, teacher.requests, gate.alpha)
    estimate = student.errors / student.requests - teacher.errors / teacher.requests
    verdict = _judge(cs.lower, cs.upper, gate.margin, higher_is_better=False)
    relation = {Verdict.PASS: "upper bound <=", Verdict.FAIL: "lower bound >"}.get(verdict, "bounds straddle")
    message = (
        f"error-rate difference {relation} margin {gate.margin:.4f}: estimate {estimate:+.4f} "
        f"({counts}), bounds [{cs.lower:+.4f}, {cs.upper:+.4f}] at alpha={gate.alpha:g}"
    )
    return GateResult(
        name="errors",
        verdict=verdict,
        n=student.requests,
        estimate=estimate,
        lower=cs.lower,
        upper=cs.upper,
        threshold=gate.margin,
        message=message,
    )


def _p99_text(histogram: LatencyHistogram) -> str:
    estimate = quantile_estimate(histogram.buckets(), P99)
    return "none" if estimate is None else f"{estimate:.4f} s"


def _ratio_criterion(ratio: float, student: LatencyHistogram, teacher: LatencyHistogram, alpha: float) -> GateResult:
    n = student.total
    context = f"student p99 ~{_p99_text(student)} (n={n}), teacher p99 ~{_p99_text(teacher)} (n={teacher.total})"
    if teacher.total == 0:
        return GateResult(
            name="latency",
            verdict=Verdict.INCONCLUSIVE,
            n=n,
            threshold=ratio,
            message=f"latency p99 ratio: no teacher latencies this stage ({context})",
        )
    cs = quantile_ratio_cs(student.buckets(), teacher.buckets(), P99, alpha)
    s_hat, t_hat = quantile_estimate(student.buckets(), P99), quantile_estimate(teacher.buckets(), P99)
    estimate = None if s_hat is None or not t_hat else s_hat / t_hat
    verdict = _judge(cs.lower, cs.upper, ratio, higher_is_better=False)
    message = (
        f"latency p99 ratio student/teacher {verdict.value}: bounds [{cs.lower:.3f}, "
        f"{cs.upper:.3f}] vs max ratio {ratio:g} at alpha={alpha:g} ({context})"
    )
    return GateResult(
        name="latency",
        verdict=verdict,
        n=n,
        estimate=estimate,
        lower=cs.lower,
        upper=_finite(cs.upper),
        threshold=ratio,
        message=message,
    )


def _slo_criterion(slo_s: float, student: LatencyHistogram, alpha: float) -> GateResult:
    cs = quantile_cs(student.buckets(), P99, alpha)
    verdict = _judge(cs.lower, cs.upper, slo_s, higher_is_better=False)
    message = (
        f"latency p99 vs SLO {slo_s:g} s {verdict.value}: "
        f"bounds [{cs.lower:.4f}, {cs.upper:.4f}] s at alpha={alpha:g} "
        f"(student p99 ~{_p99_text(student)}, n={student.total})"
    )
    return GateResult(
        name="latency",
        verdict=verdict,
        n=student.total,
        estimate=quantile_estimate(student.buckets(), P99),
        lower=cs.lower,
        upper=_finite(cs.upper),
        threshold=slo_s,
        message=message,
    )


def _latency_threshold(gate: LatencyGate) -> float:
    """The number an inconclusive latency result reports: the ratio if set, else the SLO."""
    if gate.p99_ratio is not None:
        return gate.p99_ratio
    return gate.p99_slo_s if gate.p99_slo_s is not None else 0.0


def latency_gate(gate: LatencyGate, evidence: Evidence) -> GateResult:
    """Student p99 vs teacher p99 x ratio, and/or vs an absolute SLO (Howard & Ramdas sequences).

    With both criteria configured each runs at alpha/2; any PASS passes the gate (the
    decisive criterion's numbers are reported), all FAIL fails it, anything else holds.
    """
    student, teacher = evidence.student.latency, evidence.teacher.latency
    if student.total < gate.min_samples:
        return GateResult(
            name="latency",
            verdict=Verdict.INCONCLUSIVE,
            n=student.total,
            threshold=_latency_threshold(gate),
            message=f"latency: n={student.total} student samples < min_samples {gate.min_samples}",
        )
    count = (gate.p99_ratio is not None) + (gate.p99_slo_s is not None)
    criteria = []
    if gate.p99_ratio is not None:
        criteria.append(_ratio_criterion(gate.p99_ratio, student, teacher, gate.alpha / count))
    if gate.p99_slo_s is not None:
        criteria.append(_slo_criterion(gate.p99_slo_s, student, gate.alpha / count))
    message = "; ".join(result.message for result in criteria)
    passing = [result for result in criteria if result.verdict is Verdict.PASS]
    if passing:
        return passing[0].model_copy(update={"message": message})
    holding = [result for result in criteria if result.verdict is Verdict.INCONCLUSIVE]
    return (holding or criteria)[0].model_copy(update={"message": message})


def _mean_cost(stats: VariantStats) -> float:
    return stats.cost_total / stats.requests


def cost_gate(gate: CostGate, evidence: Evidence) -> GateResult:
    """Student mean cost per request <= max_ratio x the teacher's.

    Not a statistical test and not anytime-valid: a plain ratio of means once both models
    have `min_samples` requests this stage. Per-request compute cost of a fixed model varies
    little, so after a few hundred requests the ratio is stable; the minimum is the guard.
    """
    student, teacher = evidence.student, evidence.teacher
    n = student.requests
    if n < gate.min_samples or teacher.requests < gate.min_samples:
        return GateResult(
            name="cost",
            verdict=Verdict.INCONCLUSIVE,
            n=n,
            threshold=gate.max_ratio,
            message=(
                f"cost: need min_samples {gate.min_samples} from both models "
                f"(student n={n}, teacher n={teacher.requests})"
            ),
        )
    s_mean, t_mean = _mean_cost(student), _mean_cost(teacher)
    ratio = s_mean / t_mean if t_mean > 0 else (math.inf if s_mean > 0 else 0.0)
    verdict = Verdict.PASS if ratio <= gate.max_ratio else Verdict.FAIL
    message = (
        f"cost ratio student/teacher {ratio:.3f} {'<=' if verdict is Verdict.PASS else '>'} "
        f"max {gate.max_ratio:g} (student {s_mean:.6g}/request n={n}, teacher {t_mean:.6g}/request "
        f"n={teacher.requests})"
    )
    return GateResult(
        name="cost",
        verdict=verdict,
        n=n,
        estimate=_finite(ratio),
        threshold=gate.max_ratio,
        message=message,
    )


def fast_rollback_check(gate: FastRollback, evidence: Evidence, now: float) -> GateResult:
    """The trip wire: FAIL when the student fails hard in its recent window (a breaker, not a test).

    Cheap and pure so the controller can run it on every ingested batch, not only on ticks:
    that is what brings the weight to 0 within a second of the failures reaching it.
    """
    requests, errors = evidence.recent.totals(now, gate.window_s)
    streak = evidence.recent.consecutive_errors
    rate = errors / requests if requests else None
    window = f"{errors}/{requests} student requests failed in the last {gate.window_s:g} s"
    if streak >= gate.max_consecutive_errors:
        verdict = Verdict.FAIL
        limit = gate.max_consecutive_errors
        message = f"fast rollback: {streak} student errors in a row >= limit {limit} ({window})"
    elif rate is not None and requests >= gate.min_window_requests and rate >= gate.max_error_rate:
        verdict = Verdict.FAIL
        message = f"fast rollback: student error rate {rate:.3f} ({window}) >= {gate.max_error_rate:g}"
    else:
        verdict = Verdict.INCONCLUSIVE if requests == 0 else Verdict.PASS
        message = f"fast rollback armed: {window}, {streak} errors in a row"
    return GateResult(
        name="fast_rollback",
        verdict=verdict,
        n=requests,
        estimate=rate,
        threshold=gate.max_error_rate,
        message=message,
    )


def _pooled(judge: Callable[[Evidence], GateResult], evidence: Evidence, pool: bool) -> GateResult:
    """A gate judged on the stage's own evidence and, when `pool`, on every stage's (the spec's
    `pool_stages`; rollout/evidence.py says when the pooled bound holds). The stage's own
    failure fails it whatever the pooled evidence says (a heavier stage breaking what a lighter
    one did not); otherwise the pooled verdict stands, or the stage's pass."""
    stage = judge(evidence)
    if not pool or stage.verdict is Verdict.FAIL:
        return stage
    pooled = judge(evidence.model_copy(update={"student": evidence.pooled_student, "teacher": evidence.pooled_teacher}))
    if pooled.verdict is Verdict.INCONCLUSIVE and stage.verdict is Verdict.PASS:
        return stage
    return pooled.model_copy(update={"message": f"{pooled.message} (pooled over stages; this stage: n={stage.n})"})


def evaluate_gates(spec: RolloutSpec, evidence: Evidence) -> tuple[GateResult, ...]:
    """Every enabled stage gate, in a fixed order (agreement, by class, segments, accuracy,
    errors, latency, cost), with the spec's rule for accuracy and agreement applied (`binding`)."""
    results = []
    if spec.agreement is not None:
        results.append(agreement_gate(spec.agreement, evidence))
    if spec.agreement_by_class is not None:
        results.append(class_agreement_guard(spec.agreement_by_class, evidence))
    if spec.segments is not None:
        results.append(segment_guard(spec.segments, evidence))
    if spec.accuracy is not None:
        results = combine_accuracy(spec.accuracy, accuracy_gate(spec.accuracy, evidence), results)
    if spec.errors is not None:
        errors = spec.errors
        results.append(_pooled(lambda e: error_gate(errors, e), evidence, spec.pool_stages))
    if spec.latency is not None:
        latency = spec.latency
        results.append(_pooled(lambda e: latency_gate(latency, e), evidence, spec.pool_stages))
    if spec.cost is not None:
        results.append(cost_gate(spec.cost, evidence))
    return tuple(results)
