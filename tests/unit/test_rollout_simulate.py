"""rollout.simulate: the simulator itself (streams, router model, both systems), on few runs.

The targets live in bench/rollout.py over 1000+ runs; here each system is checked on a
handful of seeds: reproducible, a good student promoted, bad ones rolled back by the right
gate, the baseline on its clock, and what each does when there is no data at all.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rollout.baseline import BaselineSpec, FlaggerBaseline, simulate_baseline
from rollout.simulate import (
    LatencyProfile,
    RequestStream,
    Result,
    Routed,
    Scenario,
    StudentProfile,
    TrafficSlice,
    causes,
    observations,
    route,
    simulate_kdcanary,
)
from rollout.spec import RolloutSpec

WEIGHTS = (0, 5, 10, 25, 50, 100)
SHADOW = (0.5, 1.0, 1.0, 0.5, 0.5, 0.5)
SPEC = RolloutSpec.from_mapping(
    {
        "stages": [
            {"weight_percent": w, "min_requests": 1000, "min_dwell_s": 30, "shadow_fraction": s}
            for w, s in zip(WEIGHTS, SHADOW, strict=True)
        ]
    }
)
TEACHER = LatencyProfile(p50_s=0.015, p99_s=0.030)
GOOD = StudentProfile(name="good", agreement=0.99, student_latency=TEACHER, teacher_latency=TEACHER)
BAD = GOOD.model_copy(update={"name": "bad", "agreement": 0.90})
BASELINE = BaselineSpec(interval_s=10, max_p99_s=0.045, shadow_fractions=SHADOW[1:])
TRAFFIC = Scenario(requests_per_s=50, max_seconds=900)
SILENCE = Scenario(requests_per_s=0, max_seconds=120)


def _draws(rows: list[list[float]]) -> np.ndarray:
    """Hand-made request draws: route, slice, student fails, teacher fails, shadow, agree, z_s, z_t."""
    return np.asarray(rows, dtype=float)


# --- streams and the router model -------------------------------------------------------------


def test_a_stream_is_fixed_by_its_seed_however_it_is_taken() -> None:
    one, other = RequestStream(50, 1.0, seed=7), RequestStream(50, 1.0, seed=7)
    grouped = one.take(100)  # crosses a block boundary (64 flushes per block)
    singly = np.concatenate([other.take() for _ in range(100)])
    assert np.array_equal(grouped, singly)
    assert grouped.shape[1] == 8
    assert 4000 < len(grouped) < 6000  # Poisson(50) per second over 100 s
    assert not np.array_equal(RequestStream(50, 1.0, seed=8).take(100)[:10], grouped[:10])


def test_router_at_weight_0_shows_the_student_only_shadow_traffic() -> None:
    draws = RequestStream(50, 1.0, seed=1).take(20)
    unshadowed = route(GOOD, draws, weight=0.0, shadow=0.0)
    assert not unshadowed.student.any() and not unshadowed.served.any()
    shadowed = route(GOOD, draws, weight=0.0, shadow=0.5)
    assert not shadowed.served.any()
    share = shadowed.student.mean()
    assert 0.45 < share < 0.55
    assert (shadowed.agreed[~shadowed.student] == -1).all()  # verdicts ride on student observations


def test_router_records_failover_shadow_failure_and_teacher_503_as_serving_does() -> None:
    profile = GOOD.model_copy(update={"error_rate": 0.5, "teacher_error_rate": 0.5})
    rows = [
        [0.1, 0.9, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # student serves, fails, teacher answers: failover
        [0.1, 0.9, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0],  # student fails, teacher fails too: 503, nothing
        [0.9, 0.9, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # teacher serves and fails: 503, nothing
        [0.9, 0.9, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # teacher serves, student shadow fails: no verdict
        [0.1, 0.9, 0.9, 0.9, 0.0, 0.999, 0.0, 0.0],  # student serves, shadowed, disagrees
    ]
    routed = route(profile, _draws(rows), weight=0.5, shadow=1.0)
    assert routed.student.tolist() == [True, False, False, True, True]
    assert routed.student_error.tolist() == [True, False, False, True, False]
    assert routed.teacher.tolist() == [True, False, False, True, True]
    assert not routed.teacher_error.any()
    assert routed.agreed.tolist() == [-1, -1, -1, -1, 0]
    assert routed.served.tolist() == [True, False, False, False, True]


def test_the_slice_changes_the_student_only_on_its_share_of_traffic() -> None:
    weak = GOOD.model_copy(update={"slice": TrafficSlice(fraction=0.2, agreement=0.0, error_rate=0.0)})
    draws = _draws([[0.9, 0.1, 0.9, 0.9, 0.0, 0.5, 0.0, 0.0], [0.9, 0.5, 0.9, 0.9, 0.0, 0.5, 0.0, 0.0]])
    assert route(weak, draws, weight=0.0, shadow=1.0).agreed.tolist() == [0, 1]


def test_observations_are_the_routers_pydantic_records() -> None:
    routed = route(GOOD, RequestStream(50, 1.0, seed=3).take(), weight=0.5, shadow=0.5)
    batch = observations(routed)
    students = [o for o in batch if o.variant.value == "student"]
    assert len(students) == int(routed.student.sum())
    assert len(batch) == int(routed.student.sum() + routed.teacher.sum())
    assert sum(o.agreed is not None for o in batch) == int((routed.agreed >= 0).sum())


def test_latency_profile_is_the_lognormal_with_that_median_and_p99() -> None:
    latencies = TEACHER.sample(np.random.default_rng(0).standard_normal(200_000))
    assert np.percentile(latencies, 50) == pytest.approx(0.015, rel=0.02)
    assert np.percentile(latencies, 99) == pytest.approx(0.030, rel=0.03)


def test_models_forbid_unknown_and_inconsistent_fields() -> None:
    with pytest.raises(ValidationError, match="treshold"):
        BaselineSpec.model_validate({"treshold": 5})
    with pytest.raises(ValidationError, match="below p50_s"):
        LatencyProfile(p50_s=0.03, p99_s=0.01)
    with pytest.raises(ValidationError, match="one per step"):
        BaselineSpec(shadow_fractions=(0.1,))


# --- kdcanary: the real policy ----------------------------------------------------------------


def test_kdcanary_runs_are_deterministic_per_seed() -> None:
    first = simulate_kdcanary(SPEC, BAD, TRAFFIC, seed=11)
    assert simulate_kdcanary(SPEC, BAD, TRAFFIC, seed=11) == first
    seeds = {simulate_kdcanary(SPEC, BAD, TRAFFIC, seed=s).student_observations for s in range(5)}
    assert len(seeds) > 1


def test_kdcanary_promotes_a_good_student_within_minutes() -> None:
    outcome = simulate_kdcanary(SPEC, GOOD, TRAFFIC, seed=0)
    assert outcome.result is Result.COMPLETED
    assert outcome.weight_percent == 100 and outcome.stage_index == len(WEIGHTS) - 1
    assert 6 * 30 <= outcome.seconds <= 600  # every stage dwelt 30 s; evidence, not the clock, sets the rest
    assert outcome.cause is None


def test_kdcanary_rolls_a_bad_student_back_from_shadow_on_agreement() -> None:
    outcomes = [simulate_kdcanary(SPEC, BAD, TRAFFIC, seed=s) for s in range(10)]
    assert all(o.result is Result.ROLLED_BACK for o in outcomes)
    assert causes(outcomes) == {"agreement": 10}
    assert all(o.student_served == 0 and o.stage_index == 0 for o in outcomes)  # no user saw it
    assert float(np.median([o.student_observations for o in outcomes])) < 300


def test_kdcanary_catches_a_slow_tail_and_a_broken_student_by_their_gates() -> None:
    slow = GOOD.model_copy(update={"name": "slow", "student_latency": LatencyProfile(p50_s=0.015, p99_s=0.09)})
    assert simulate_kdcanary(SPEC, slow, TRAFFIC, seed=0).cause == "latency"
    broken = GOOD.model_copy(update={"name": "broken", "error_rate": 1.0})
    outcome = simulate_kdcanary(SPEC, broken, TRAFFIC, seed=0)
    assert (outcome.result, outcome.cause) == (Result.ROLLED_BACK, "fast_rollback")
    assert outcome.seconds <= 2


def test_kdcanary_without_data_holds_at_shadow_and_never_rolls_back() -> None:
    outcome = simulate_kdcanary(SPEC, GOOD, SILENCE, seed=0)
    assert outcome.result is Result.TIMED_OUT
    assert (outcome.stage_index, outcome.weight_percent, outcome.seconds) == (0, 0.0, SILENCE.max_seconds)
    assert outcome.student_observations == 0


# --- the Flagger-style baseline ---------------------------------------------------------------


def _window(students: int, agreed: int, compared: int, errors: int = 0, latency_s: float = 0.01) -> Routed:
    """A Routed with `students` student observations (the baseline reads only those)."""
    flags = np.ones(students, dtype=bool)
    verdicts = np.full(students, -1, dtype=np.int8)
    verdicts[:compared] = 0
    verdicts[:agreed] = 1
    errs = np.zeros(students, dtype=bool)
    errs[:errors] = True
    return Routed(
        served=flags,
        student=flags,
        student_error=errs,
        student_latency=np.full(students, latency_s),
        agreed=verdicts,
        teacher=np.zeros(students, dtype=bool),
        teacher_error=np.zeros(students, dtype=bool),
        teacher_latency=np.zeros(students),
    )


def test_baseline_steps_once_per_interval_and_promotes_after_the_last_check() -> None:
    flagger = FlaggerBaseline(BASELINE)
    weights = []
    for iteration in range(6):
        flagger.iterate(iteration * 10.0)
        weights.append(flagger.weight_percent)
        flagger.observe(_window(500, agreed=495, compared=500))
    assert weights == [5, 10, 25, 50, 100, 100]
    assert (flagger.result, flagger.ended_at) == (Result.COMPLETED, 50.0)


def test_baseline_judges_fixed_thresholds_on_point_estimates() -> None:
    flagger = FlaggerBaseline(BASELINE)
    flagger.iterate(0.0)
    flagger.observe(_window(100, agreed=96, compared=100, errors=2, latency_s=0.05))
    assert flagger.failures() == ("agreement", "errors", "latency")
    fresh = FlaggerBaseline(BASELINE)
    fresh.observe(_window(100, agreed=97, compared=100, errors=1, latency_s=0.045))
    assert fresh.failures() == ()  # 0.97 >= 0.97, 1 % <= 1 %, p99 <= limit: no error bars


def test_baseline_rolls_back_one_iteration_after_its_threshold_of_failed_checks() -> None:
    outcome = simulate_baseline(BASELINE, BAD, TRAFFIC, seed=0)
    assert outcome.result is Result.ROLLED_BACK
    assert outcome.seconds == (BASELINE.threshold + 1) * BASELINE.interval_s  # Flagger checks the count first
    assert outcome.cause == "agreement"
    assert outcome.stage_index == 0 and outcome.student_served > 0  # users saw it at 5 %


def test_baseline_promotes_a_good_student_on_its_clock() -> None:
    flagger = BASELINE.model_copy(update={"interval_s": 60.0})  # Flagger's default: 5 steps, 5 minutes
    outcome = simulate_baseline(flagger, GOOD, TRAFFIC, seed=0)
    assert (outcome.result, outcome.seconds) == (Result.COMPLETED, 300.0)
    assert simulate_baseline(flagger, GOOD, TRAFFIC, seed=0) == outcome


def test_baseline_point_estimates_fail_good_students_on_small_windows() -> None:
    hasty = BASELINE.model_copy(update={"interval_s": 2.0})  # ~50 comparisons and student requests a window
    outcomes = [simulate_baseline(hasty, GOOD, TRAFFIC, seed=s) for s in range(20)]
    assert all(o.result is not Result.TIMED_OUT for o in outcomes)
    assert sum(o.seconds > 10.0 for o in outcomes) >= 2  # intervals lost to windows below 0.97 or above 1 %


def test_baseline_counts_missing_data_as_failed_checks() -> None:
    flagger = FlaggerBaseline(BASELINE)
    flagger.iterate(0.0)
    assert flagger.failures() == ("agreement:no_data", "errors:no_data", "latency:no_data")
    outcome = simulate_baseline(BASELINE, GOOD, SILENCE, seed=0)
    assert outcome.result is Result.ROLLED_BACK
    assert outcome.seconds == (BASELINE.threshold + 1) * BASELINE.interval_s
    assert outcome.cause == "agreement:no_data,errors:no_data,latency:no_data"


def test_failed_checks_are_never_reset_by_passing_ones() -> None:
    flagger = FlaggerBaseline(BASELINE.model_copy(update={"threshold": 2}))
    flagger.iterate(0.0)
    for window in (_window(100, 50, 100), _window(100, 100, 100), _window(100, 50, 100)):
        flagger.observe(window)
        flagger.iterate(10.0)
    assert flagger.failed_checks == 2 and flagger.result is None
    flagger.iterate(20.0)
    assert flagger.result is Result.ROLLED_BACK and flagger.weight_percent == 0
