"""rollout.gates and answer_gates: no data is inconclusive; verdicts follow the bounds; messages carry numbers."""

from __future__ import annotations

import pytest

from rollout.answer_gates import accuracy_gate, agreement_gate, class_agreement_guard, segment_guard
from rollout.errors import SpecError
from rollout.evidence import Accuracy, Agreement, Evidence, RecentWindow, Segment, VariantStats, histogram_of
from rollout.gates import Verdict, cost_gate, error_gate, evaluate_gates, fast_rollback_check, latency_gate
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


def _latencies(base: float, n: int) -> list[float]:
    """n latencies spread evenly over [0.8, 1.2] x base: p99 is about 1.2 x base."""
    return [base * (0.8 + 0.4 * i / (n - 1)) for i in range(n)]


def _stats(n: int, errors: int = 0, latency: float = 0.01, cost: float = 1.0) -> VariantStats:
    return VariantStats(requests=n, errors=errors, cost_total=cost * n, latency=histogram_of(_latencies(latency, n)))


def test_every_gate_is_inconclusive_without_data() -> None:
    spec = RolloutSpec.from_mapping({"cost": {"max_ratio": 0.5}, "latency": {"p99_slo_s": 0.1}})
    results = evaluate_gates(spec, Evidence())
    assert [r.name for r in results] == ["agreement", "accuracy", "errors", "latency", "cost"]
    assert all(r.verdict is Verdict.INCONCLUSIVE and r.n == 0 for r in results)
    assert fast_rollback_check(FastRollback(), Evidence(), now=0.0).verdict is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(
    ("agreed", "compared", "verdict"),
    [(1990, 2000, Verdict.PASS), (900, 1000, Verdict.FAIL), (97, 100, Verdict.INCONCLUSIVE)],
)
def test_agreement_verdict_follows_the_robbins_bounds(agreed: int, compared: int, verdict: Verdict) -> None:
    evidence = Evidence(agreement=Agreement(agreed=agreed, compared=compared))
    result = agreement_gate(AgreementGate(threshold=0.97, alpha=0.05), evidence)
    assert result.verdict is verdict
    assert result.n == compared and result.estimate == agreed / compared and result.threshold == 0.97
    assert result.lower is not None and result.upper is not None
    assert result.lower <= agreed / compared <= result.upper


def test_agreement_failure_message_carries_the_numbers() -> None:
    result = agreement_gate(AgreementGate(), Evidence(agreement=Agreement(agreed=900, compared=1000)))
    assert result.upper is not None and result.upper < 0.97
    assert result.message.startswith("agreement upper bound < threshold 0.9700: estimate 0.9000 (900/1000)")
    assert f"{result.upper:.4f}" in result.message and "alpha=0.05" in result.message


def test_error_gate_passes_a_clean_student_and_fails_a_broken_one() -> None:
    gate = ErrorGate(margin=0.01)
    clean = error_gate(gate, Evidence(student=_stats(3000), teacher=_stats(30000, errors=30)))
    assert clean.verdict is Verdict.PASS and clean.upper is not None and clean.upper <= 0.01
    broken = error_gate(gate, Evidence(student=_stats(1000, errors=100), teacher=_stats(20000, errors=20)))
    assert broken.verdict is Verdict.FAIL
    assert broken.lower is not None and broken.lower > 0.01
    assert "student 100/1000, teacher 20/20000" in broken.message and "+0.0990" in broken.message


def test_error_gate_needs_both_models() -> None:
    result = error_gate(ErrorGate(), Evidence(student=_stats(5000)))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "student 0/5000, teacher 0/0" in result.message


def test_error_gate_is_inconclusive_while_the_bounds_straddle_the_margin() -> None:
    result = error_gate(ErrorGate(margin=0.01), Evidence(student=_stats(300, errors=3), teacher=_stats(300)))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.lower is not None and result.upper is not None
    assert result.lower <= 0.01 < result.upper


def test_latency_ratio_pass_and_fail() -> None:
    gate = LatencyGate(p99_ratio=1.5)
    fast_student = Evidence(student=_stats(3000, latency=0.010), teacher=_stats(20000, latency=0.030))
    result = latency_gate(gate, fast_student)
    assert result.verdict is Verdict.PASS
    assert result.estimate == pytest.approx(1 / 3, rel=0.05)
    assert result.upper is not None and result.upper <= 1.5
    slow_student = Evidence(student=_stats(3000, latency=0.100), teacher=_stats(20000, latency=0.030))
    failed = latency_gate(gate, slow_student)
    assert failed.verdict is Verdict.FAIL and failed.lower is not None and failed.lower > 1.5
    assert "latency p99 ratio student/teacher fail" in failed.message and "n=3000" in failed.message


def test_latency_is_inconclusive_below_min_samples_and_unbounded_at_few_samples() -> None:
    gate = LatencyGate(p99_ratio=1.5, min_samples=200)
    few = latency_gate(gate, Evidence(student=_stats(100), teacher=_stats(20000)))
    assert few.verdict is Verdict.INCONCLUSIVE and "n=100 student samples < min_samples 200" in few.message
    # 500 samples pass min_samples but cannot bound a p99 from above yet (upper stays None).
    some = latency_gate(gate, Evidence(student=_stats(500), teacher=_stats(20000)))
    assert some.verdict is Verdict.INCONCLUSIVE and some.upper is None


def test_latency_slo_alone_needs_no_teacher() -> None:
    result = latency_gate(LatencyGate(p99_ratio=None, p99_slo_s=0.05), Evidence(student=_stats(3000)))
    assert result.verdict is Verdict.PASS and result.threshold == 0.05
    assert result.upper is not None and result.upper <= 0.05


def test_latency_passes_when_either_criterion_passes_and_fails_only_when_both_fail() -> None:
    slow = Evidence(student=_stats(4000, latency=0.100), teacher=_stats(20000, latency=0.030))
    under_slo = latency_gate(LatencyGate(p99_ratio=1.5, p99_slo_s=0.5), slow)
    assert under_slo.verdict is Verdict.PASS and under_slo.threshold == 0.5
    assert "ratio student/teacher fail" in under_slo.message  # both criteria are reported
    over_both = latency_gate(LatencyGate(p99_ratio=1.5, p99_slo_s=0.05), slow)
    assert over_both.verdict is Verdict.FAIL


def test_cost_gate_is_a_plain_ratio_after_min_samples() -> None:
    gate = CostGate(max_ratio=0.5, min_samples=100)
    cheap = cost_gate(gate, Evidence(student=_stats(200, cost=0.2), teacher=_stats(200, cost=1.0)))
    assert cheap.verdict is Verdict.PASS and cheap.estimate == pytest.approx(0.2)
    dear = cost_gate(gate, Evidence(student=_stats(200, cost=0.8), teacher=_stats(200, cost=1.0)))
    assert dear.verdict is Verdict.FAIL and "cost ratio student/teacher 0.800 > max 0.5" in dear.message
    early = cost_gate(gate, Evidence(student=_stats(50, cost=5.0), teacher=_stats(200)))
    assert early.verdict is Verdict.INCONCLUSIVE


def test_fast_rollback_trips_on_a_streak() -> None:
    evidence = Evidence(recent=RecentWindow(per_second={10: (20, 20)}, consecutive_errors=20))
    result = fast_rollback_check(FastRollback(max_consecutive_errors=20), evidence, now=10.5)
    assert result.verdict is Verdict.FAIL
    assert "20 student errors in a row >= limit 20" in result.message


def test_fast_rollback_trips_on_a_window_rate_and_ignores_old_seconds() -> None:
    gate = FastRollback(window_s=10, max_error_rate=0.5, min_window_requests=20)
    evidence = Evidence(recent=RecentWindow(per_second={1: (100, 100), 30: (40, 20)}))
    result = fast_rollback_check(gate, evidence, now=30.2)
    assert result.verdict is Verdict.FAIL and result.n == 40 and result.estimate == 0.5
    assert "student error rate 0.500 (20/40 student requests failed in the last 10 s) >= 0.5" in result.message
    too_few = Evidence(recent=RecentWindow(per_second={30: (10, 10)}))
    assert fast_rollback_check(gate, too_few, now=30.2).verdict is Verdict.PASS
    healthy = Evidence(recent=RecentWindow(per_second={30: (40, 1)}))
    assert fast_rollback_check(gate, healthy, now=30.2).verdict is Verdict.PASS


# --- agreement by class --------------------------------------------------------------------------


def _classes(**counts: tuple[int, int]) -> Evidence:
    """Evidence whose per-class agreement is label=(agreed, compared), pooled overall too."""
    classes = {label: Agreement(agreed=a, compared=n) for label, (a, n) in counts.items()}
    overall = Agreement(agreed=sum(a for a, _ in counts.values()), compared=sum(n for _, n in counts.values()))
    return Evidence(agreement=overall, classes=classes)


def test_a_minority_class_regression_fails_the_guard_while_the_average_passes() -> None:
    evidence = _classes(common=(3582, 3600), minority=(320, 400))  # 0.995 and 0.80: 0.9755 overall
    spec = RolloutSpec.from_mapping({"agreement": {"threshold": 0.97}, "agreement_by_class": {"threshold": 0.9}})
    overall, by_class = evaluate_gates(spec, evidence)[:2]
    assert overall.verdict is not Verdict.FAIL
    assert by_class.verdict is Verdict.FAIL and by_class.upper is not None and by_class.upper < 0.9
    assert "class 'minority': agreement 0.8000 (320/400)" in by_class.message and "< 0.9000" in by_class.message


def test_healthy_classes_pass_the_guard_naming_the_lowest() -> None:
    result = class_agreement_guard(ClassAgreementGuard(threshold=0.9), _classes(a=(990, 1000), b=(95, 100)))
    assert result.verdict is Verdict.PASS and result.n == 1100
    assert "class 'b'" in result.message and "none shown below 0.9000" in result.message


def test_the_guard_is_inconclusive_without_pairs_and_splits_alpha_over_the_classes() -> None:
    assert class_agreement_guard(ClassAgreementGuard(), Evidence()).verdict is Verdict.INCONCLUSIVE
    evidence = _classes(a=(70, 100))
    declared = class_agreement_guard(ClassAgreementGuard(threshold=0.9, classes=10), evidence)
    alone = class_agreement_guard(ClassAgreementGuard(threshold=0.9, classes=1), evidence)
    assert declared.upper is not None and alone.upper is not None and declared.upper > alone.upper  # alpha / 10


def _labelled(**counts: int) -> Evidence:
    return Evidence(accuracy=Accuracy(**counts))


def test_accuracy_is_inconclusive_without_labels_and_fails_a_paired_regression() -> None:
    assert accuracy_gate(AccuracyGate(), Evidence()).verdict is Verdict.INCONCLUSIVE
    worse = _labelled(both_right=3600, both_wrong=300, only_teacher=100, teacher_labelled=4000, teacher_correct=3700)
    result = accuracy_gate(AccuracyGate(margin=0.01), worse)
    assert result.verdict is Verdict.FAIL and result.upper is not None and result.upper < -0.01
    assert result.estimate == -0.025 and "100 only teacher right" in result.message


def test_accuracy_passes_a_better_student_on_served_answers_alone() -> None:
    served = _labelled(student_labelled=20000, student_correct=18400, teacher_labelled=20000, teacher_correct=18200)
    result = accuracy_gate(AccuracyGate(margin=0.01), served)
    assert result.verdict is Verdict.PASS and result.lower is not None and result.lower >= -0.01


def _agreement_and_labels(agreed: int, compared: int, **counts: int) -> Evidence:
    return Evidence(agreement=Agreement(agreed=agreed, compared=compared), accuracy=Accuracy(**counts))


def test_by_default_accuracy_outranks_failing_agreement_once_labels_decide() -> None:
    spec = RolloutSpec(errors=None, latency=None)  # agreement 0.97, accuracy deciding after 50 labels
    better = {"both_right": 9000, "both_wrong": 500, "only_student": 300, "only_teacher": 200}
    early = evaluate_gates(spec, _agreement_and_labels(900, 1000))  # agreement 0.90: fails, no labels
    assert [g.name for g in early if g.fails] == ["agreement"]
    arriving = evaluate_gates(spec, _agreement_and_labels(900, 1000, both_right=10, teacher_labelled=10))
    assert not any(g.fails for g in arriving) and "labels are arriving, 10 of the 50" in arriving[0].message
    proven = evaluate_gates(spec, _agreement_and_labels(900, 1000, **better, teacher_labelled=2000))
    by_name = {g.name: g for g in proven}
    assert by_name["accuracy"].verdict is Verdict.PASS and by_name["accuracy"].binding
    assert by_name["agreement"].verdict is Verdict.FAIL and not by_name["agreement"].binding
    pending = evaluate_gates(
        spec, _agreement_and_labels(900, 1000, both_right=190, only_student=5, only_teacher=5, teacher_labelled=200)
    )
    assert not any(g.fails for g in pending) and [g.name for g in pending if g.blocks] == ["accuracy"]


def test_a_failing_accuracy_always_counts_and_also_mode_makes_it_a_plain_gate() -> None:
    worse = {"both_right": 80, "only_teacher": 20, "teacher_labelled": 100}
    results = evaluate_gates(RolloutSpec(), _agreement_and_labels(1990, 2000, **worse))
    assert [g.name for g in results if g.fails] == ["accuracy"]  # a failure counts whatever the count
    also = RolloutSpec.from_mapping({"accuracy": {"mode": "also"}, "errors": None, "latency": None})
    assert [g.name for g in evaluate_gates(also, _agreement_and_labels(1990, 2000)) if g.blocks] == ["accuracy"]


def test_the_class_guard_stands_when_accuracy_decides_and_guards_mode_only_vetoes() -> None:
    classes = _classes(common=(3582, 3600), minority=(320, 400))
    better = {
        "both_right": 9000,
        "both_wrong": 500,
        "only_student": 300,
        "only_teacher": 200,
        "teacher_labelled": 10000,
    }
    evidence = classes.model_copy(update={"accuracy": Accuracy(**better)})
    spec = RolloutSpec.from_mapping({"agreement_by_class": {"threshold": 0.9}, "errors": None, "latency": None})
    assert [g.name for g in evaluate_gates(spec, evidence) if g.fails] == ["agreement_by_class"]
    guards = spec.model_copy(update={"accuracy": AccuracyGate(mode="guards")})
    low = _agreement_and_labels(900, 1000, **better)  # accuracy passes; agreement 0.90 still fails
    assert [g.name for g in evaluate_gates(guards, low) if g.fails] == ["agreement"]


def _segments(**counts: tuple[int, int]) -> Evidence:
    segments = {name: Segment(agreement=Agreement(agreed=a, compared=n)) for name, (a, n) in counts.items()}
    return Evidence(segments=segments)


def test_a_segment_regression_fails_the_segment_guard_naming_the_segment() -> None:
    guard = SegmentGuard(names=("web", "mobile"), threshold=0.9)
    result = segment_guard(guard, _segments(web=(3582, 3600), mobile=(330, 412)))
    assert result.verdict is Verdict.FAIL and result.upper is not None and result.upper < 0.9
    assert "segment 'mobile': agreement 0.8010 (330/412)" in result.message and "< 0.9000" in result.message
    healthy = segment_guard(guard, _segments(web=(990, 1000), other=(95, 100)))
    assert healthy.verdict is Verdict.PASS and "segment 'other'" in healthy.message
    assert segment_guard(guard, Evidence()).verdict is Verdict.INCONCLUSIVE


def test_a_segment_less_accurate_on_labels_fails_while_its_agreement_passes() -> None:
    worse = Accuracy(both_right=3600, both_wrong=300, only_teacher=100, teacher_labelled=4000)
    evidence = Evidence(
        segments={
            "web": Segment(agreement=Agreement(agreed=3900, compared=4000), accuracy=worse),
            "api": Segment(agreement=Agreement(agreed=990, compared=1000)),
        }
    )
    result = segment_guard(SegmentGuard(names=("web", "api"), threshold=0.9), evidence)
    assert (
        result.verdict is Verdict.FAIL
        and "accuracy by segment: segment 'web': student - teacher -0.0250" in result.message
    )
    blind = segment_guard(SegmentGuard(names=("web", "api"), threshold=0.9, accuracy_margin=None), evidence)
    assert blind.verdict is Verdict.PASS


def test_segments_are_declared_distinct_and_never_other() -> None:
    for names, needle in ((["web", "other"], "undeclared segments go"), (["a", "a"], "each segment once")):
        with pytest.raises(SpecError, match=needle):
            RolloutSpec.from_mapping({"segments": {"names": names}})
    with pytest.raises(SpecError, match=r"segments\.names"):
        RolloutSpec.from_mapping({"segments": {"names": ["no spaces please"]}})
    assert SegmentGuard(names=("web",)).canonical("tv") == "other"


def test_errors_pass_on_pooled_evidence_and_fail_on_the_stage_s_own() -> None:
    spec = RolloutSpec(agreement=None, latency=None, accuracy=None)
    fresh_stage = Evidence(
        student=_stats(50), teacher=_stats(50), pooled_student=_stats(4000), pooled_teacher=_stats(4000)
    )
    (errors,) = evaluate_gates(spec, fresh_stage)
    assert errors.verdict is Verdict.PASS and "pooled over stages; this stage: n=50" in errors.message
    (alone,) = evaluate_gates(spec.model_copy(update={"pool_stages": False}), fresh_stage)
    assert alone.verdict is Verdict.INCONCLUSIVE
    breaking = fresh_stage.model_copy(update={"student": _stats(2000, errors=200), "teacher": _stats(2000)})
    (broken,) = evaluate_gates(spec, breaking)
    assert broken.verdict is Verdict.FAIL and "pooled" not in broken.message  # the heavier stage's own failure
