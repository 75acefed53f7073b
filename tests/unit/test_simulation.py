"""bench.simulation, bench.world and bench.baseline: the router's core and the real controller (or the
Flagger-style baseline) in a simulated world, on small runs.

The targets live in bench/rollout.py over 1000+ runs; here: the world is fixed by its seed,
the decision-maker sees what the core records (teacher failures included), a good student is
promoted, bad ones are rolled back by the right gate, the baseline keeps its clock, and each
does what it does when there is no data at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from bench.baseline import BaselineSpec, FlaggerBaseline, simulate_baseline
from bench.simulation import (
    DecisionMaker,
    Outcome,
    Result,
    Run,
    Scenario,
    causes,
    run_rollout,
    simulate_kdcanary,
    simulate_watch,
)
from bench.world import Drift, LatencyProfile, RequestStream, StudentProfile
from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.evidence import Observation, Variant
from rollout.spec import RolloutSpec
from rollout.store import MemoryStateStore
from rollout.views import PublishedRouting
from rollout.webhooks import RecordingWebhookSender

T, S = Variant.TEACHER, Variant.STUDENT
WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
SHADOW = (0.5, 1.0, 1.0, 0.5, 0.5, 0.5)
SPEC = RolloutSpec.from_mapping(
    {
        "stages": [
            {"weight": w, "min_requests": 1000, "min_dwell_s": 30, "shadow_fraction": s}
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


class Fixed:
    """A decision-maker that publishes one routing and keeps every batch it is sent."""

    def __init__(self, weight: float, shadow: float) -> None:
        self.batches: list[list[Observation]] = []
        self._routing = PublishedRouting(weight=weight, shadow_fraction=shadow, version=1)

    def record(self, observations: Sequence[Observation]) -> None:
        self.batches.append(list(observations))

    def tick(self) -> None:
        pass

    def next_tick_at(self) -> float:
        return float("inf")

    def routing(self) -> PublishedRouting:
        return self._routing

    @property
    def seen(self) -> list[Observation]:
        return [obs for batch in self.batches for obs in batch]


def _fixed_run(profile: StudentProfile, weight: float, shadow: float, seconds: float = 10.0) -> tuple[Fixed, Run]:
    fixed = Fixed(weight, shadow)
    decider: DecisionMaker = fixed
    scenario = Scenario(requests_per_s=50, max_seconds=seconds)
    return fixed, run_rollout(decider, lambda: False, profile, scenario, 3, FakeClock())


def _arrivals(profile: StudentProfile, seed: int, seconds: float) -> list[tuple[bool, bool, bool]]:
    """(student fails, teacher fails, agrees) of every request that arrives within `seconds`."""
    stream, drawn = RequestStream(profile, 50, seed), []
    while stream.next_at() < seconds:
        draw = stream.pop()
        drawn.append((draw.student_fails, draw.teacher_fails, draw.agrees))
    return drawn


# --- the world ----------------------------------------------------------------------------------


def test_a_stream_is_fixed_by_its_seed() -> None:
    first, again = RequestStream(GOOD, 50, seed=7), RequestStream(GOOD, 50, seed=7)
    draws = [first.pop() for _ in range(3 * RequestStream.BLOCK)]  # crosses block boundaries
    assert draws == [again.pop() for _ in range(3 * RequestStream.BLOCK)]
    assert 0.9 * 50 < len(draws) / draws[-1].at < 1.1 * 50  # Poisson at 50 requests/s
    assert all(a.at < b.at for a, b in itertools.pairwise(draws))
    other = RequestStream(GOOD, 50, seed=8)
    assert other.next_at() != draws[0].at
    assert RequestStream(GOOD, 0, seed=7).next_at() == float("inf")


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


# --- the loop: what the decision-maker sees comes from the core -----------------------------------


def test_the_core_records_each_calls_drawn_latency_and_one_verdict_per_pair() -> None:
    exact = GOOD.model_copy(
        update={"student_latency": LatencyProfile(p50_s=0.25, p99_s=0.25), "error_rate": 0.0, "teacher_error_rate": 0.0}
    )
    fixed, run = _fixed_run(exact, weight=0.5, shadow=1.0)
    seen, drawn = fixed.seen, _arrivals(exact, 3, 10.0)
    assert len(seen) == 2 * len(drawn)  # every request answered and shadowed: one observation per model
    assert all(obs.latency_s == pytest.approx(0.25, abs=1e-9) for obs in seen if obs.variant is S)
    assert (run.seconds, run.comparisons, run.student_observations) == (10.0, len(drawn), len(drawn))
    assert 0.4 * len(drawn) < run.student_served < 0.6 * len(drawn)  # the router's coin at weight 0.5
    assert all(obs.agreed is None for obs in seen if obs.variant is T)
    assert sum(obs.agreed is not None for obs in seen) == len(drawn)
    assert sum(obs.agreed is False for obs in seen) == sum(not agrees for *_, agrees in drawn)


def test_a_teacher_failure_reaches_the_evidence_as_the_router_records_it() -> None:
    flaky = GOOD.model_copy(update={"teacher_error_rate": 0.3})
    seen = _fixed_run(flaky, weight=0.0, shadow=0.0)[0].seen  # every request to the teacher, none shadowed
    drawn = _arrivals(flaky, 3, 10.0)
    assert [obs.error for obs in seen] == [teacher_fails for _, teacher_fails, _ in drawn]
    assert {obs.variant for obs in seen} == {T}

    clock = FakeClock()
    controller = RolloutController(SPEC, MemoryStateStore(), clock, RecordingWebhookSender())
    controller.start(actor="test", reason="teacher failures")
    run_rollout(controller, lambda: False, flaky, Scenario(requests_per_s=50, max_seconds=20), 3, clock)
    evidence = controller.snapshot().evidence
    assert 0.2 < evidence.teacher_errors / evidence.teacher_requests < 0.4  # 503s count, not only shadows


def test_a_student_failure_fails_over_and_the_router_counts_it_as_served() -> None:
    broken = GOOD.model_copy(update={"error_rate": 1.0, "teacher_error_rate": 0.0})
    fixed, run = _fixed_run(broken, weight=1.0, shadow=1.0, seconds=2.0)
    assert [(obs.variant, obs.error) for obs in fixed.seen] == [(S, True), (T, False)] * run.student_served
    assert run.student_served == len(_arrivals(broken, 3, 2.0)) and run.comparisons == 0  # a failover: no shadow


def test_the_same_seed_gives_the_same_outcome() -> None:
    for simulate in (lambda seed: simulate_kdcanary(SPEC, BAD, TRAFFIC, seed), _baseline_bad):
        first = simulate(11)
        assert simulate(11) == first
        assert len({simulate(seed).student_observations for seed in range(4)}) > 1


def _baseline_bad(seed: int) -> Outcome:
    return simulate_baseline(BASELINE, BAD, Scenario(requests_per_s=50, max_seconds=25), seed)


# --- kdcanary: the real controller ----------------------------------------------------------------


def test_kdcanary_promotes_a_good_student_within_minutes() -> None:
    outcome = simulate_kdcanary(SPEC, GOOD, TRAFFIC, seed=0)
    assert outcome.result is Result.COMPLETED
    assert outcome.weight == 1 and outcome.stage_index == len(WEIGHTS) - 1
    assert 6 * 30 <= outcome.seconds <= 600  # every stage dwelt 30 s; evidence, not the clock, sets the rest
    assert outcome.cause is None and outcome.student_served > 0


def test_kdcanary_rolls_a_bad_student_back_from_shadow_on_agreement() -> None:
    outcomes = [simulate_kdcanary(SPEC, BAD, TRAFFIC, seed=s) for s in range(10)]
    assert all(o.result is Result.ROLLED_BACK for o in outcomes)
    assert causes(outcomes) == {"agreement": 10}
    assert all(o.student_served == 0 and o.stage_index == 0 for o in outcomes)  # no user saw it
    assert float(np.median([o.student_observations for o in outcomes])) < 300


def test_kdcanary_catches_a_slow_tail_and_a_broken_student() -> None:
    slow = GOOD.model_copy(update={"name": "slow", "student_latency": LatencyProfile(p50_s=0.015, p99_s=0.09)})
    assert simulate_kdcanary(SPEC, slow, TRAFFIC, seed=0).cause == "latency"
    broken = GOOD.model_copy(update={"name": "broken", "error_rate": 1.0})
    outcome = simulate_kdcanary(SPEC, broken, TRAFFIC, seed=0)
    assert outcome.result is Result.ROLLED_BACK and outcome.cause in {"errors", "fast_rollback"}
    assert outcome.seconds <= 2 and outcome.student_served == 0


def test_kdcanary_without_data_holds_at_shadow_and_never_rolls_back() -> None:
    outcome = simulate_kdcanary(SPEC, GOOD, SILENCE, seed=0)
    assert outcome.result is Result.TIMED_OUT
    assert (outcome.stage_index, outcome.weight, outcome.seconds) == (0, 0.0, SILENCE.max_seconds)
    assert outcome.student_observations == 0


# --- the Flagger-style baseline -----------------------------------------------------------------


def _window(students: int, agreed: int, compared: int, errors: int = 0, latency_s: float = 0.01) -> list[Observation]:
    """`students` student observations (the baseline reads only those) and one teacher's."""
    return [
        Observation(variant=S, latency_s=latency_s, error=i < errors, agreed=(i < agreed) if i < compared else None)
        for i in range(students)
    ] + [Observation(variant=T, latency_s=1.0, error=True)]


def test_baseline_steps_once_per_interval_and_promotes_after_the_last_check() -> None:
    clock = FakeClock(start=0.0)
    flagger = FlaggerBaseline(BASELINE, clock)
    weights = []
    for _ in range(6):
        assert flagger.next_tick_at() == clock.now()
        flagger.tick()
        weights.append(flagger.routing().weight)
        flagger.record(_window(500, agreed=495, compared=500))
        clock.advance(10.0)
    assert weights == [0.05, 0.1, 0.25, 0.5, 1.0, 1.0]
    assert (flagger.result, flagger.ended_at) == (Result.COMPLETED, 50.0)
    assert flagger.routing().shadow_fraction == 0.0 and flagger.routing().version == 6


def test_baseline_judges_fixed_thresholds_on_point_estimates() -> None:
    flagger = FlaggerBaseline(BASELINE, FakeClock())
    flagger.record(_window(100, agreed=96, compared=100, errors=2, latency_s=0.05))
    assert flagger.failures() == ("agreement", "errors", "latency")
    fresh = FlaggerBaseline(BASELINE, FakeClock())
    fresh.record(_window(100, agreed=97, compared=100, errors=1, latency_s=0.045))
    assert fresh.failures() == ()  # 0.97 >= 0.97, 1 % <= 1 %, p99 <= limit: no error bars


def test_failed_checks_are_never_reset_by_passing_ones() -> None:
    clock = FakeClock()
    flagger = FlaggerBaseline(BASELINE.model_copy(update={"threshold": 2}), clock)
    flagger.tick()
    for window in (_window(100, 50, 100), _window(100, 100, 100), _window(100, 50, 100)):
        flagger.record(window)
        flagger.tick()
    assert flagger.failed_checks == 2 and flagger.result is None
    flagger.tick()
    assert flagger.result is Result.ROLLED_BACK and flagger.routing().weight == 0


def test_baseline_rolls_back_one_iteration_after_its_threshold_of_failed_checks() -> None:
    outcome = simulate_baseline(BASELINE, BAD, TRAFFIC, seed=0)
    assert outcome.result is Result.ROLLED_BACK
    assert outcome.seconds == (BASELINE.threshold + 1) * BASELINE.interval_s  # Flagger checks the count first
    assert outcome.cause == "agreement"
    assert outcome.stage_index == 0 and outcome.student_served > 0  # users saw it at 5 %


def test_baseline_promotes_a_good_student_on_its_clock() -> None:
    outcome = simulate_baseline(BASELINE, GOOD, TRAFFIC, seed=0)
    assert (outcome.result, outcome.seconds) == (Result.COMPLETED, 5 * BASELINE.interval_s)


def test_baseline_point_estimates_fail_good_students_on_small_windows() -> None:
    hasty = BASELINE.model_copy(update={"interval_s": 2.0})  # ~50 comparisons and student requests a window
    outcomes = [simulate_baseline(hasty, GOOD, TRAFFIC, seed=s) for s in range(20)]
    assert all(o.result is not Result.TIMED_OUT for o in outcomes)
    assert sum(o.seconds > 10.0 for o in outcomes) >= 2  # intervals lost to windows below 0.97 or above 1 %


def test_baseline_counts_missing_data_as_failed_checks() -> None:
    flagger = FlaggerBaseline(BASELINE, FakeClock())
    flagger.tick()
    assert flagger.failures() == ("agreement:no_data", "errors:no_data", "latency:no_data")
    outcome = simulate_baseline(BASELINE, GOOD, SILENCE, seed=0)
    assert outcome.result is Result.ROLLED_BACK
    assert outcome.seconds == (BASELINE.threshold + 1) * BASELINE.interval_s
    assert outcome.cause == "agreement:no_data,errors:no_data,latency:no_data"


def test_a_watched_student_that_drifts_is_rolled_back_after_the_change_not_before() -> None:
    drifting = GOOD.model_copy(update={"drift": Drift(after_s=120.0, agreement=0.85)})
    outcome = simulate_watch(SPEC, drifting, Scenario(requests_per_s=50.0, max_seconds=900.0), seed=3)
    assert not outcome.false_alarm and outcome.compared_before_change > 200  # 5 % of 50/s for 120 s
    assert outcome.delay_observations is not None and 0 < outcome.delay_observations < 1000
    assert outcome.delay_seconds is not None and outcome.delay_seconds > 0


def test_a_drift_changes_only_the_requests_after_it() -> None:
    drifting = GOOD.model_copy(update={"drift": Drift(after_s=60.0, agreement=0.0)})
    same, changed = RequestStream(GOOD, 50.0, seed=1), RequestStream(drifting, 50.0, seed=1)
    pairs = [(same.pop(), changed.pop()) for _ in range(6000)]
    assert all(a == b for a, b in pairs if a.at < 60.0)
    assert not any(b.agrees for _, b in pairs if b.at >= 60.0)
