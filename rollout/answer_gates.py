"""Gates on what the models answered: agreement overall, by class and by segment, and
accuracy against labels that came back (feedback), with the spec's rule for combining them.

Agreement compares the two models' answers to the same input (shadowed requests); accuracy
compares each with the label the product later sent. Both are Bernoulli evidence judged by
Robbins' mixture sequences (rollout/stats.py); every message names its group and numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout.evidence import Accuracy, Agreement, Evidence
from rollout.spec import AccuracyGate, AgreementGate, ClassAgreementGuard, SegmentGuard
from rollout.stats import Interval, bernoulli_cs, difference_cs, paired_difference_cs
from rollout.verdict import GateResult, Verdict, judge


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
    verdict = judge(cs.lower, cs.upper, gate.threshold, higher_is_better=True)
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
    verdict = judge(bounds.lower, bounds.upper, threshold, higher_is_better=True)
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
