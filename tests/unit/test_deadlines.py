"""Stage deadlines and confirmations through the controller: an inconclusive stage never holds
forever in silence, and a stage that asks for a person's yes waits for it, visibly."""

from __future__ import annotations

import pytest

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import IntentError
from rollout.evidence import Observation, Variant
from rollout.policy import Action
from rollout.spec import RolloutSpec
from rollout.status import Phase
from rollout.store import MemoryStateStore
from rollout.webhooks import RecordingWebhookSender

OPS = {"actor": "alice@example.com", "reason": "ship student v2"}
STAGES = [{"weight": w, "min_requests": 100, "min_dwell_s": 10, "shadow_fraction": 0.5} for w in (0.0, 0.1, 0.5, 1.0)]


def rig(**spec: object) -> tuple[RolloutController, FakeClock, RecordingWebhookSender]:
    clock, hooks = FakeClock(1_000.0), RecordingWebhookSender()
    rollout_spec = RolloutSpec.from_mapping({"stages": STAGES, "watch": None, **spec})
    return RolloutController(rollout_spec, MemoryStateStore(), clock, hooks), clock, hooks


def pairs(n: int, agreement: float = 0.995) -> list[Observation]:
    batch = []
    for i in range(n):
        agreed = i % 1000 < agreement * 1000
        batch.append(Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=agreed))
        batch.append(Observation(variant=Variant.TEACHER, latency_s=0.01))
    return batch


def test_a_stage_holding_past_its_deadline_pauses_with_the_numbers_and_resume_restarts_the_clock() -> None:
    controller, clock, hooks = rig(max_stage_duration_s=600)
    controller.start(**OPS)
    assert controller.snapshot().deadline_at == 1_600.0
    clock.advance(599)
    assert controller.tick().action is Action.HOLD  # no traffic: every gate inconclusive
    clock.advance(1)
    decision = controller.tick()
    assert decision.action is Action.PAUSE and controller.status().phase is Phase.PAUSED  # type: ignore[union-attr]
    assert decision.reasons[0] == "deadline: stage 0 (0 %) still holding after 600 s (max 600 s): pause"
    deadline = next(g for g in decision.gates if g.name == "deadline")
    assert (deadline.verdict.value, deadline.estimate, deadline.threshold) == ("fail", 600.0, 600.0)
    assert hooks.sent[-1].action == "pause" and controller.snapshot().deadline_passed_at == 1_600.0
    clock.advance(3_600)
    assert controller.tick().action is Action.HOLD  # stays paused: a person decides
    controller.resume(**OPS)
    assert controller.tick().action is Action.RESUME
    view = controller.snapshot()
    assert view.phase is Phase.PROGRESSING and view.deadline_passed_at is None and view.deadline_at == 5_800.0


def test_a_stage_of_its_own_deadline_may_roll_back_instead() -> None:
    stages = [dict(STAGES[0], max_duration_s=60), *STAGES[1:]]
    controller, clock, _ = rig(stages=stages, deadline_action="rollback")
    controller.start(**OPS)
    clock.advance(60)
    assert controller.tick().action is Action.ROLLBACK
    assert controller.snapshot().counters.rollbacks == {"deadline": 1}


def test_a_stage_that_asks_for_confirmation_waits_for_it_visibly() -> None:
    stages = [STAGES[0], dict(STAGES[1], confirm=True), *STAGES[2:]]
    controller, clock, hooks = rig(stages=stages, max_stage_duration_s=30)
    controller.start(**OPS)
    for _ in range(3):
        clock.advance(20)  # past the stage's 30 s deadline: waiting for a person is not holding on evidence
        controller.record(pairs(2_000))
        decision = controller.tick()
        assert (
            decision.action is Action.HOLD and "waiting for confirmation to enter stage 1 (10 %)" in decision.reasons[0]
        )
    view = controller.snapshot()
    assert view.awaiting_confirmation == 1 and view.stage_index == 0
    controller.confirm(actor="bob@example.com", reason="QA signed off")
    assert controller.tick().action is Action.ADVANCE and controller.routing().weight == 0.1
    confirm = next(e for e in hooks.sent if e.action == "confirm")
    assert (confirm.actor, confirm.reason, confirm.payload["stage"]) == ("bob@example.com", "QA signed off", 1)
    assert controller.snapshot().awaiting_confirmation is None


def test_rollbacks_fire_while_waiting_for_confirmation() -> None:
    stages = [STAGES[0], dict(STAGES[1], confirm=True), *STAGES[2:]]
    controller, clock, _ = rig(stages=stages)
    controller.start(**OPS)
    clock.advance(20)
    controller.record(pairs(2_000))
    assert controller.tick().awaiting_confirmation == 1
    controller.record(pairs(3_000, agreement=0.5))
    assert controller.tick().action is Action.ROLLBACK


def test_confirm_is_refused_where_the_next_stage_asks_for_none() -> None:
    controller, _, _ = rig()
    controller.start(**OPS)
    with pytest.raises(IntentError, match="cannot confirm: stage 1 does not ask for a confirmation"):
        controller.confirm(actor="bob", reason="eager")
    with pytest.raises(IntentError, match="without a reason"):
        controller.confirm(actor="bob", reason="")
