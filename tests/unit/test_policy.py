"""rollout.policy: tick-by-tick scenarios with a fake clock (set evidence -> tick -> assert).

`Controller` below is what the real controller does around the pure core, minus the I/O:
fold router batches into evidence, tick, roll the evidence over to the new epoch.
"""

from __future__ import annotations

import pytest

from rollout.errors import SpecError
from rollout.evidence import Evidence, Observation, Variant, add_observations, rollover
from rollout.gates import Verdict
from rollout.policy import Action, Decision, Routing, apply, check_spec_change, decide, routing, tick, urgent
from rollout.spec import RolloutSpec
from rollout.status import (
    Phase,
    PromoteTarget,
    RolloutStatus,
    request_manual_weight,
    request_pause,
    request_promote,
    request_resume,
    request_rollback,
)

WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
SPEC = RolloutSpec.from_mapping(
    {
        "stages": [{"weight": w, "min_requests": 1000, "min_dwell_s": 60, "shadow_fraction": 0.2} for w in WEIGHTS],
        "smoke": None,  # the smoke test has tests of its own (test_smoke.py)
    }
)
T0 = 1_000_000.0


def traffic(
    n: int,
    *,
    disagree_every: int = 200,
    student_error_rate: float = 0.0,
    student_latency: float = 0.010,
    teacher_latency: float = 0.030,
) -> list[Observation]:
    """n student and n teacher observations; student errors evenly spread (no streaks)."""
    batch = []
    for i in range(n):
        spread = 0.8 + 0.4 * (i % 50) / 49
        error = int((i + 1) * student_error_rate) > int(i * student_error_rate)
        agreed = i % disagree_every != 0
        batch.append(
            Observation(
                variant=Variant.STUDENT,
                latency_s=student_latency * spread,
                error=error,
                agreed=agreed,
            )
        )
        batch.append(Observation(variant=Variant.TEACHER, latency_s=teacher_latency * spread))
    return batch


def failures(n: int) -> list[Observation]:
    return [Observation(variant=Variant.STUDENT, latency_s=5.0, error=True) for _ in range(n)]


class Controller:
    """The controller's loop around the pure core, with a fake clock that only moves on advance()."""

    def __init__(self, spec: RolloutSpec = SPEC) -> None:
        self.spec = spec
        self.status = RolloutStatus()
        self.evidence = Evidence()
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def observe(self, observations: list[Observation]) -> None:
        self.evidence = add_observations(self.evidence, observations, self.now)

    def tick(self) -> Decision:
        decision, self.status = tick(self.spec, self.status, self.evidence, self.now)
        self.evidence = rollover(self.evidence, self.status.epoch)
        return decision

    def started(self) -> Controller:
        assert self.tick().action is Action.START
        return self

    def at_stage(self, index: int) -> Controller:
        """Started, then promoted by an operator to stage `index` (no evidence needed)."""
        self.started()
        for _ in range(index):
            self.status = request_promote(self.status)
            assert self.tick().action is Action.ADVANCE
        return self


# --- the main walks -------------------------------------------------------------------------


def test_good_student_walks_every_stage_and_completes() -> None:
    c = Controller().started()
    assert (c.status.phase, c.status.weight) == (Phase.PROGRESSING, 0)
    moves = []
    for _ in range(40):
        c.advance(30)
        c.observe(traffic(600))
        stage, started, n = (
            c.status.stage_index,
            c.status.stage_started_at,
            c.evidence.student.requests,
        )
        decision = c.tick()
        if decision.action in (Action.ADVANCE, Action.COMPLETE):
            assert started is not None and c.now - started >= SPEC.stages[stage].min_dwell_s
            assert n >= SPEC.stages[stage].min_requests
            assert all(g.verdict is not Verdict.FAIL for g in decision.gates)
            moves.append((decision.action, c.status.weight))
        else:
            assert decision.action is Action.HOLD
        if c.status.settled:
            break
    assert moves == [(Action.ADVANCE, w) for w in WEIGHTS[1:]] + [(Action.COMPLETE, 1.0)]
    assert c.status.phase is Phase.WATCHING and c.status.weight == 1  # the spec's default watch
    assert c.status.epoch == 5 and c.status.rollback_reason is None


def test_advance_reasons_carry_the_gate_numbers() -> None:
    c = Controller().started()
    decision = c.tick()
    for _ in range(5):
        c.advance(30)
        c.observe(traffic(600))
        decision = c.tick()
        if decision.action is Action.ADVANCE:
            break
    assert decision.action is Action.ADVANCE
    assert decision.reasons[0].startswith("stage 0 (0 %) satisfied (student n=")
    assert decision.reasons[0].endswith("advancing to stage 1 (5 %)")
    assert any(r.startswith("agreement lower bound >= threshold 0.9700") for r in decision.reasons)
    binding = [g.verdict for g in decision.gates if g.binding]  # accuracy waits for labels: not binding yet
    assert binding == [Verdict.PASS] * 4  # 3 gates + the trip wire


def test_bad_agreement_rolls_back_with_the_numbers_in_the_reason() -> None:
    c = Controller().started()
    c.advance(10)
    c.observe(traffic(1000, disagree_every=10))  # 90 % agreement against a 0.97 threshold
    decision = c.tick()
    assert decision.action is Action.ROLLBACK
    assert (c.status.phase, c.status.weight) == (Phase.ROLLED_BACK, 0)
    reason = c.status.rollback_reason or ""
    assert "agreement upper bound < threshold 0.9700: estimate 0.9000 (900/1000)" in reason
    agreement = next(g for g in decision.gates if g.name == "agreement")
    assert agreement.upper is not None and f"{agreement.upper:.4f}" in reason
    assert routing(SPEC, c.status) == Routing(weight=0, shadow_fraction=0)


def test_agreement_pools_across_stages_so_a_later_collapse_is_caught() -> None:
    c = Controller().at_stage(2)
    c.observe(traffic(2000))  # good agreement while at 10 %
    c.advance(60)
    c.tick()
    assert c.status.stage_index == 3 and c.evidence.agreement.compared == 2000
    assert c.evidence.student.requests == 0  # per-stage evidence restarted at 25 %
    c.advance(1)
    c.observe(traffic(1000, disagree_every=2))  # the student starts disagreeing half the time
    decision = c.tick()
    assert decision.action is Action.ROLLBACK
    assert "(2490/3000)" in (c.status.rollback_reason or "")


def test_no_data_holds_and_every_gate_is_inconclusive() -> None:
    c = Controller().started()
    for _ in range(5):
        c.advance(600)
        decision = c.tick()
        assert decision.action is Action.HOLD and c.status.phase is Phase.PROGRESSING
        assert c.status.weight == 0
    stage_gates = [g for g in decision.gates if g.name != "fast_rollback"]
    assert all(g.verdict is Verdict.INCONCLUSIVE for g in stage_gates)
    assert "min_requests: student n=0 < 1000" in decision.reasons
    assert any("no paired answers yet (n=0)" in r for r in decision.reasons)


def test_min_dwell_holds_until_it_elapses_and_says_when_to_look() -> None:
    spec = SPEC.model_copy(update={"tick_interval_s": 30.0})
    c = Controller(spec).started()
    c.advance(45)
    c.observe(traffic(3000))
    decision = c.tick()
    assert decision.action is Action.HOLD
    assert decision.reasons == ("holding at stage 0 (0 %)", "min_dwell: 45.0 s < 60 s")
    assert decision.next_check_at == T0 + 60  # the dwell ends before the next regular tick
    c.advance(15)
    assert c.tick().action is Action.ADVANCE


def test_min_requests_holds_until_enough_student_observations() -> None:
    stages = [{"weight": w, "min_requests": 5000, "min_dwell_s": 0} for w in WEIGHTS]
    c = Controller(RolloutSpec.from_mapping({"stages": stages, "smoke": None})).started()
    c.observe(traffic(3000))
    decision = c.tick()
    assert decision.action is Action.HOLD
    assert decision.reasons == ("holding at stage 0 (0 %)", "min_requests: student n=3000 < 5000")
    c.observe(traffic(2000))
    assert c.tick().action is Action.ADVANCE


def test_error_rate_worse_than_the_teacher_rolls_back() -> None:
    c = Controller().at_stage(1)
    c.observe(traffic(1000, student_error_rate=0.1))
    decision = c.tick()
    assert decision.action is Action.ROLLBACK
    assert "error-rate difference lower bound > margin 0.0100" in (c.status.rollback_reason or "")
    assert "student 100/1000, teacher 0/1000" in (c.status.rollback_reason or "")


def test_slow_student_rolls_back_on_p99_latency() -> None:
    c = Controller().at_stage(1)
    c.observe(traffic(3000, student_latency=0.100))
    assert c.tick().action is Action.ROLLBACK
    assert "latency p99 ratio student/teacher fail" in (c.status.rollback_reason or "")


# --- fast rollback --------------------------------------------------------------------------


def test_error_burst_takes_the_weight_to_zero_within_a_second() -> None:
    c = Controller().at_stage(2)
    assert c.status.weight == 0.1
    decision = c.tick()
    assert decision.next_check_at is not None and decision.next_check_at - c.now <= 1.0
    c.advance(0.3)
    c.observe(failures(25))  # the batch holding the burst reaches the controller
    burst_at = c.now
    assert urgent(c.spec, c.status, c.evidence, c.now)  # so it ticks now, not at next_check_at
    decision = c.tick()
    assert decision.action is Action.ROLLBACK and c.status.weight == 0
    assert c.status.last_transition_at is not None and c.status.last_transition_at - burst_at <= 1.0
    assert "fast rollback: 25 student errors in a row >= limit 20" in (c.status.rollback_reason or "")


def test_a_high_error_rate_in_the_window_trips_without_a_streak() -> None:
    c = Controller().at_stage(1)
    ok = Observation(variant=Variant.STUDENT, latency_s=0.01)
    c.observe([ok if i % 2 else failures(1)[0] for i in range(60)])
    decision = c.tick()
    assert decision.action is Action.ROLLBACK
    assert "student error rate 0.500 (30/60" in (c.status.rollback_reason or "")


def test_fast_rollback_wins_over_promote_and_pause() -> None:
    c = Controller().at_stage(1)
    c.status = request_pause(request_promote(c.status, PromoteTarget.FULL))
    c.observe(failures(30))
    assert c.tick().action is Action.ROLLBACK


def test_a_failing_gate_rolls_back_even_while_paused() -> None:
    c = Controller().at_stage(1)
    c.status = request_pause(c.status)
    assert c.tick().action is Action.PAUSE
    c.observe(traffic(1000, disagree_every=5))
    assert c.tick().action is Action.ROLLBACK


# --- operator intents -----------------------------------------------------------------------


def test_pause_holds_the_weight_and_resume_continues_the_stage() -> None:
    c = Controller().at_stage(1)
    c.status = request_pause(c.status)
    decision = c.tick()
    assert decision.action is Action.PAUSE and decision.reasons == ("paused by operator at stage 1 (5 %)",)
    assert (c.status.phase, c.status.weight) == (Phase.PAUSED, 0.05)
    c.observe(traffic(2000))
    c.advance(600)
    assert c.tick().action is Action.HOLD and c.status.stage_index == 1  # satisfied, but paused
    c.status = request_resume(c.status)
    assert c.tick().action is Action.RESUME and c.status.phase is Phase.PROGRESSING
    assert c.tick().action is Action.ADVANCE and c.status.weight == 0.1


def test_promote_next_skips_the_conditions_once() -> None:
    c = Controller().started()
    c.status = request_promote(c.status)
    assert urgent(c.spec, c.status, c.evidence, c.now)
    decision = c.tick()
    assert decision.action is Action.ADVANCE and decision.promote_consumed
    assert decision.reasons == ("operator promote: stage 0 (0 %) -> stage 1 (5 %)",)
    assert (c.status.stage_index, c.status.weight, c.status.intents.promote) == (1, 0.05, None)
    assert c.tick().action is Action.HOLD


def test_promote_full_completes_at_100() -> None:
    c = Controller().at_stage(1)
    c.status = request_promote(c.status, PromoteTarget.FULL)
    decision = c.tick()
    assert decision.action is Action.COMPLETE
    assert (c.status.phase, c.status.weight, c.status.stage_index) == (
        Phase.WATCHING,
        1.0,
        5,
    )
    assert routing(SPEC, c.status) == Routing(weight=1.0, shadow_fraction=0.05)  # the watch's share


def test_promote_while_paused_moves_the_stage_but_stays_paused() -> None:
    c = Controller().at_stage(1)
    c.status = request_promote(request_pause(c.status))
    assert c.tick().action is Action.ADVANCE
    assert (c.status.phase, c.status.stage_index, c.status.weight) == (Phase.PAUSED, 2, 0.1)


def test_manual_weight_overrides_pauses_and_restarts_stage_evidence() -> None:
    c = Controller().at_stage(1)
    c.observe(traffic(500))
    epoch = c.status.epoch
    c.status = request_manual_weight(c.status, 0.3)
    decision = c.tick()
    assert decision.action is Action.PAUSE
    assert decision.reasons == ("manual weight 30 % at stage 1 (5 %): progression paused",)
    assert (c.status.phase, c.status.weight, c.status.epoch) == (
        Phase.PAUSED,
        0.3,
        epoch + 1,
    )
    assert c.evidence.student.requests == 0 and c.evidence.agreement.compared == 500
    assert routing(SPEC, c.status) == Routing(weight=0.3, shadow_fraction=0.2)
    c.status = request_manual_weight(c.status, None)  # withdrawn: nothing else holds the pause
    assert c.tick().action is Action.RESUME
    assert (c.status.phase, c.status.weight) == (Phase.PROGRESSING, 0.05)


def test_operator_rollback_records_the_reason_and_ends_the_rollout() -> None:
    c = Controller().at_stage(3)
    c.status = request_rollback(c.status, "support tickets up 4x")
    assert urgent(c.spec, c.status, c.evidence, c.now)
    decision = c.tick()
    assert decision.action is Action.ROLLBACK
    assert c.status.rollback_reason == "operator rollback: support tickets up 4x"
    assert (c.status.phase, c.status.weight, c.status.intents.abort) == (
        Phase.ROLLED_BACK,
        0,
        False,
    )
    later = c.tick()
    assert later.action is Action.HOLD and later.next_check_at is None
    assert later.reasons == ("rollout is rolled_back; nothing to do",)
    assert not urgent(c.spec, c.status, c.evidence, c.now)


# --- purity, persistence, records -----------------------------------------------------------


def test_decide_is_a_pure_function_of_its_inputs() -> None:
    c = Controller().at_stage(1)
    c.observe(traffic(1500))
    status, evidence = c.status, c.evidence
    first = decide(SPEC, status, evidence, c.now + 100)
    assert decide(SPEC, status, evidence, c.now + 100) == first
    assert (c.status, c.evidence) == (status, evidence)
    assert apply(status, first, c.now + 100) == apply(status, first, c.now + 100)


def test_restart_reloads_the_status_from_json_and_continues_identically() -> None:
    straight, restarted = Controller().started(), Controller().started()
    for step in range(8):
        for c in (straight, restarted):
            c.advance(30)
            c.observe(traffic(600))
        if step == 3:  # the controller restarts: status and evidence reloaded from the store
            restarted.status = RolloutStatus.model_validate_json(restarted.status.model_dump_json())
            restarted.evidence = Evidence.model_validate_json(restarted.evidence.model_dump_json())
        assert straight.tick() == restarted.tick()
        assert straight.status == restarted.status


def test_decisions_serialise_with_unbounded_bounds_as_null() -> None:
    c = Controller().started()
    c.observe(traffic(500))
    decision = c.tick()
    latency = next(g for g in decision.gates if g.name == "latency")
    assert latency.upper is None
    assert Decision.model_validate_json(decision.model_dump_json()) == decision


def test_a_status_past_the_specs_stages_is_a_spec_error() -> None:
    status = RolloutStatus(phase=Phase.PROGRESSING, stage_index=9, weight=0.5)
    with pytest.raises(SpecError, match="stage_index 9 is beyond the spec's 6 stages"):
        decide(SPEC, status, Evidence(), T0)


def test_status_message_and_counters_follow_the_ticks() -> None:
    c = Controller().started()
    assert c.status.ticks == 1 and c.status.last_transition_at == T0 and c.status.stage_started_at == T0
    assert c.status.message == "start: rollout started at stage 0 (0 %)"
    c.advance(5)
    c.tick()
    assert c.status.ticks == 2 and c.status.last_transition_at == T0  # a hold is not a transition


def test_a_spec_change_must_keep_the_live_stage_and_its_weight() -> None:
    old = RolloutSpec.from_mapping({"stages": [{"weight": 0}, {"weight": 0.1}, {"weight": 1}]})
    moved = RolloutSpec.from_mapping({"stages": [{"weight": 0}, {"weight": 0.2}, {"weight": 1}]})
    shorter = RolloutSpec.from_mapping({"stages": [{"weight": 0}, {"weight": 1}]})
    live = RolloutStatus(phase=Phase.PROGRESSING, stage_index=1, weight=0.1)
    check_spec_change(None, old, moved)  # nothing started: anything goes
    check_spec_change(live.model_copy(update={"phase": Phase.ROLLED_BACK}), old, moved)  # over: anything goes
    check_spec_change(live, old, old.model_copy(update={"tick_interval_s": 5.0}))
    with pytest.raises(SpecError, match=r"stages\.1\.weight: .* stage 1 \(10 %\), the new spec puts it at 20 %"):
        check_spec_change(live, old, moved)
    with pytest.raises(SpecError, match="at stage 2, the new spec has 2 stages"):
        check_spec_change(live.model_copy(update={"stage_index": 2, "weight": 1.0}), old, shorter)
