"""Gates: evidence in, a verdict with its numbers out (no clients, no clock, no side effects).

Modelled on Argo Rollouts' `assessMetricStatus`: each gate only reads the aggregates it is
handed. Three verdicts (rollout/verdict.py), and no data is always INCONCLUSIVE, never a pass
or a fail. Every message carries n, estimate, bounds and threshold.

This module holds the operational gates (errors, latency, cost, the fast-rollback trip wire)
and `evaluate_gates`, which runs every gate the spec enables; the gates on the answers
themselves (agreement, classes, segments, accuracy) live in rollout/answer_gates.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rollout.answer_gates import (
    accuracy_gate,
    agreement_gate,
    class_agreement_guard,
    combine_accuracy,
    segment_guard,
)
from rollout.evidence import Evidence, VariantStats
from rollout.latency import LatencyHistogram
from rollout.spec import CostGate, ErrorGate, FastRollback, LatencyGate, RolloutSpec
from rollout.stats import difference_cs, quantile_cs, quantile_estimate, quantile_ratio_cs
from rollout.verdict import GateResult, Verdict, finite, judge

__all__ = [
    "GateResult",
    "Verdict",
    "cost_gate",
    "error_gate",
    "evaluate_gates",
    "fast_rollback_check",
    "latency_gate",
]

P99 = 0.99


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
    verdict = judge(cs.lower, cs.upper, gate.margin, higher_is_better=False)
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
    verdict = judge(cs.lower, cs.upper, ratio, higher_is_better=False)
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
        upper=finite(cs.upper),
        threshold=ratio,
        message=message,
    )


def _slo_criterion(slo_s: float, student: LatencyHistogram, alpha: float) -> GateResult:
    cs = quantile_cs(student.buckets(), P99, alpha)
    verdict = judge(cs.lower, cs.upper, slo_s, higher_is_better=False)
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
        upper=finite(cs.upper),
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
        estimate=finite(ratio),
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
