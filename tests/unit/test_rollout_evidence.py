"""rollout.evidence: folding observations in, merging, per-stage rollover."""

from __future__ import annotations

import pytest

from rollout.evidence import (
    RECENT_RETENTION_S,
    Agreement,
    Evidence,
    Observation,
    Variant,
    VariantStats,
    add_observations,
    merge_stats,
    rollover,
)
from rollout.latency import histogram_of

S, T = Variant.STUDENT, Variant.TEACHER


def test_add_observations_counts_each_variant_and_pools_agreement() -> None:
    batch = [
        Observation(variant=S, latency_s=0.01, cost=2.0, agreed=True),
        Observation(variant=S, latency_s=0.02, error=True, cost=2.0, agreed=False),
        Observation(variant=T, latency_s=0.03, cost=10.0),
    ]
    evidence = add_observations(Evidence(), batch, now=100.0)
    assert (evidence.student.requests, evidence.student.errors, evidence.student.cost_total) == (
        2,
        1,
        4.0,
    )
    assert (evidence.teacher.requests, evidence.teacher.errors) == (1, 0)
    assert evidence.student.latency.total == 2 and evidence.teacher.latency.total == 1
    assert (evidence.agreement.agreed, evidence.agreement.compared) == (1, 2)
    assert evidence.recent.per_second == {100: (2, 1)}
    assert evidence.recent.consecutive_errors == 1


def test_adding_is_pure() -> None:
    before = Evidence()
    after = add_observations(before, [Observation(variant=S, latency_s=0.01, error=True)], now=1.0)
    assert before == Evidence()
    assert after is not before


def test_a_student_success_ends_the_error_streak_and_teacher_errors_do_not_count() -> None:
    errors = [Observation(variant=S, latency_s=0.01, error=True)] * 3
    evidence = add_observations(Evidence(), errors, now=1.0)
    evidence = add_observations(evidence, [Observation(variant=T, latency_s=0.01, error=True)], now=1.5)
    assert evidence.recent.consecutive_errors == 3
    evidence = add_observations(evidence, [Observation(variant=S, latency_s=0.01), *errors[:1]], now=2.0)
    assert evidence.recent.consecutive_errors == 1


def test_recent_window_sums_whole_seconds_and_forgets_after_retention() -> None:
    ok = Observation(variant=S, latency_s=0.01)
    bad = Observation(variant=S, latency_s=0.01, error=True)
    evidence = add_observations(Evidence(), [ok, bad], now=10.2)
    evidence = add_observations(evidence, [bad], now=10.9)
    evidence = add_observations(evidence, [ok], now=15.0)
    assert evidence.recent.per_second == {10: (3, 2), 15: (1, 0)}
    assert evidence.recent.totals(now=15.5, window_s=2.0) == (1, 0)
    assert evidence.recent.totals(now=15.5, window_s=10.0) == (4, 2)
    later = add_observations(evidence, [ok], now=10.0 + RECENT_RETENTION_S)
    assert 10 not in later.recent.per_second and 15 in later.recent.per_second


def test_merge_is_associative_and_commutative() -> None:
    def stats(*latencies: float) -> VariantStats:
        return VariantStats(requests=len(latencies), errors=1, cost_total=0.5, latency=histogram_of(latencies))

    a, b, c = stats(0.01, 0.02), stats(0.5), stats(0.01, 3.0, 200.0)
    assert merge_stats(merge_stats(a, b), c) == merge_stats(a, merge_stats(b, c)) == merge_stats(c, merge_stats(b, a))
    assert merge_stats(a, VariantStats()) == a


def test_rollover_restarts_per_stage_parts_and_keeps_agreement_and_window() -> None:
    batch = [
        Observation(variant=S, latency_s=0.01, agreed=True, error=True),
        Observation(variant=T, latency_s=0.02),
    ]
    evidence = add_observations(Evidence(), batch, now=5.0)
    assert rollover(evidence, 0) is evidence
    fresh = rollover(evidence, 1)
    assert fresh.epoch == 1
    assert fresh.student == VariantStats() and fresh.teacher == VariantStats()
    assert fresh.agreement == evidence.agreement and fresh.recent == evidence.recent
    assert rollover(fresh, 1) is fresh


def test_evidence_round_trips_through_json() -> None:
    batch = [Observation(variant=S, latency_s=x / 1000, agreed=x % 2 == 0, error=x % 5 == 0) for x in range(1, 50)]
    evidence = add_observations(Evidence(epoch=3), batch, now=12.5)
    assert Evidence.model_validate_json(evidence.model_dump_json()) == evidence


def test_observations_reject_negative_latency_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match="latency_s"):
        Observation(variant=S, latency_s=-0.1)
    with pytest.raises(ValueError, match="user_id"):
        Observation.model_validate({"variant": "student", "latency_s": 0.1, "user_id": "u1"})


def test_per_class_agreement_counts_each_input_under_the_teachers_label_and_survives_a_new_stage() -> None:
    student = Observation(
        variant=Variant.STUDENT, latency_s=0.01, agreed=False, by_class=(("pos", True), ("neg", False))
    )
    evidence = add_observations(Evidence(), [student, student.model_copy(update={"by_class": (("neg", True),)})], 0.0)
    assert evidence.classes == {"pos": Agreement(agreed=1, compared=1), "neg": Agreement(agreed=1, compared=2)}
    assert rollover(evidence, epoch=1).classes == evidence.classes  # pooled across stages, like agreement
