"""rollout.controller: tick-by-tick scenarios on a FakeClock, MemoryStateStore and
RecordingWebhookSender (set evidence -> record / tick -> assert status, routing, events)."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import IntentError
from rollout.events import EventKind
from rollout.evidence import Observation, Variant
from rollout.policy import Action
from rollout.spec import RolloutSpec
from rollout.status import Phase
from rollout.store import MemoryStateStore
from rollout.views import PublishedRouting
from rollout.webhooks import RecordingWebhookSender

WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
SPEC = RolloutSpec.from_mapping(
    {"stages": [{"weight": w, "min_requests": 1000, "min_dwell_s": 60, "shadow_fraction": 0.2} for w in WEIGHTS]}
)
T0 = 1_000_000.0
OPS = {"actor": "alice@example.com", "reason": "canary for student v2"}


def traffic(n: int, *, disagree_every: int = 200) -> list[Observation]:
    """n student and n teacher observations: a good student (99.5 % agreement, 3x faster)."""
    batch = []
    for i in range(n):
        spread = 0.8 + 0.4 * (i % 50) / 49
        agreed = i % disagree_every != 0
        batch.append(Observation(variant=Variant.STUDENT, latency_s=0.010 * spread, agreed=agreed))
        batch.append(Observation(variant=Variant.TEACHER, latency_s=0.030 * spread))
    return batch


def failures(n: int) -> list[Observation]:
    return [Observation(variant=Variant.STUDENT, latency_s=5.0, error=True) for _ in range(n)]


class Rig:
    """A controller over fakes, plus the fakes themselves."""

    def __init__(self, spec: RolloutSpec = SPEC) -> None:
        self.clock = FakeClock(T0)
        self.store = MemoryStateStore()
        self.hooks = RecordingWebhookSender()
        self.c = RolloutController(spec, self.store, self.clock, self.hooks)

    def step(self, seconds: float = 30, n: int = 600) -> Action:
        self.clock.advance(seconds)
        self.c.record(traffic(n))
        return self.c.tick().action

    def at_stage(self, index: int) -> Rig:
        self.c.start(**OPS)
        for _ in range(index):
            self.c.promote(actor="alice@example.com", reason="skip ahead for the test")
        assert self.c.routing().weight == WEIGHTS[index]
        return self


def test_before_start_nothing_routes_and_ticks_hold() -> None:
    rig = Rig()
    assert rig.c.routing() == PublishedRouting(weight=0, shadow_fraction=0, version=0)
    decision = rig.c.tick()
    assert decision.action is Action.HOLD and decision.reasons == ("no rollout started: waiting for an operator start",)
    assert rig.c.status() is None and rig.store.load() is None and rig.hooks.sent == []
    with pytest.raises(IntentError, match="cannot pause: no rollout started"):
        rig.c.pause(**OPS)


def test_good_student_walks_every_stage_and_completes_with_a_webhook_per_change() -> None:
    rig = Rig()
    status = rig.c.start(**OPS)  # pending -> the start intent is urgent: the tick runs inside the call
    assert (status.phase, status.weight) == (Phase.PROGRESSING, 0)
    versions = [rig.c.routing().version]
    for _ in range(40):
        action = rig.step()
        assert action in (Action.HOLD, Action.ADVANCE, Action.COMPLETE)
        if action is not Action.HOLD:
            versions.append(rig.c.routing().version)
        if rig.c.status().settled:  # type: ignore[union-attr]
            break
    final = rig.c.status()
    assert final is not None and (final.phase, final.weight) == (Phase.WATCHING, 1)
    decisions = [e for e in rig.hooks.sent if e.kind is EventKind.DECISION]
    assert [(e.action, e.payload["to"]["weight"]) for e in decisions] == [
        ("start", 0),
        ("advance", 0.05),
        ("advance", 0.1),
        ("advance", 0.25),
        ("advance", 0.5),
        ("advance", 1.0),
        ("complete", 1.0),
    ]
    assert versions == sorted(set(versions))  # strictly rising with each change
    advance = decisions[1]
    gates = {g["name"]: g for g in advance.payload["decision"]["gates"]}
    assert gates["agreement"]["verdict"] == "pass" and gates["agreement"]["n"] >= 1000
    assert advance.payload["evidence"]["student_requests"] >= 1000  # the evidence it stood on
    assert rig.store.events() == rig.hooks.sent  # the log and the webhooks saw the same events
    assert rig.c.routing() == PublishedRouting(weight=1.0, shadow_fraction=0.05, version=versions[-1])  # watched
    assert {g.name for g in rig.c.snapshot().gates} >= {"agreement", "errors"}  # the gates that completed it
    assert rig.step() is Action.HOLD  # watching: the watch and the trip wire are what a tick judges now
    assert [g.name for g in rig.c.snapshot().gates] == ["watch", "fast_rollback"]


def test_a_hard_failure_burst_reaches_weight_zero_inside_record() -> None:
    rig = Rig().at_stage(3)
    before = rig.c.routing()
    rig.clock.advance(0.2)
    decision = rig.c.record(failures(25))  # no tick() call anywhere below
    assert decision is not None and decision.action is Action.ROLLBACK
    after = rig.c.routing()
    assert after.weight == 0 and after.shadow_fraction == 0 and after.version > before.version
    rollback = rig.hooks.sent[-1]
    assert (rollback.kind, rollback.action, rollback.at) == (EventKind.DECISION, "rollback", T0 + 0.2)
    assert rollback.reason.startswith("fast rollback: 25 student errors in a row >= limit 20")
    assert rig.store.events()[-1] == rollback
    view = rig.c.snapshot()
    assert view.phase is Phase.ROLLED_BACK and view.counters.rollbacks == {"fast_rollback": 1}


def test_a_failing_gate_rolls_back_on_the_tick_with_its_numbers() -> None:
    rig = Rig()
    rig.c.start(**OPS)
    rig.clock.advance(10)
    rig.c.record(traffic(1000, disagree_every=10))  # 90 % agreement against 0.97: not urgent, the tick decides
    assert rig.c.routing().shadow_fraction == 0.2
    decision = rig.c.tick()
    assert decision.action is Action.ROLLBACK
    status = rig.c.status()
    assert status is not None and "agreement upper bound < threshold 0.9700" in (status.rollback_reason or "")
    assert "(900/1000)" in rig.hooks.sent[-1].reason
    assert rig.c.snapshot().counters.rollbacks == {"agreement": 1}


def test_no_traffic_holds_and_the_eta_is_unknown() -> None:
    rig = Rig()
    rig.c.start(**OPS)
    for _ in range(3):
        rig.clock.advance(600)
        assert rig.c.tick().action is Action.HOLD
    view = rig.c.snapshot()
    assert (view.stage_index, view.weight) == (0, 0)
    assert view.eta.seconds is None and view.eta.basis.startswith("unknown: 1000 more student requests needed")
    assert {g.name: g.verdict.value for g in view.gates}["agreement"] == "inconclusive"


def test_snapshot_shows_gates_eta_and_counters_at_the_current_traffic() -> None:
    rig = Rig()
    rig.c.start(**OPS)  # stage 0 starts at T0
    rig.clock.advance(10)
    rig.c.record(traffic(100))  # 100 student observations in 10 s: 10/s
    assert rig.c.tick().action is Action.HOLD
    view = rig.c.snapshot()
    assert view.student_rate_per_s == pytest.approx(10.0)
    assert view.eta.seconds == pytest.approx(90.0)  # 900 more at 10/s; the dwell needs only 50 s more
    assert view.eta.at == pytest.approx(T0 + 100)
    assert "min_requests: 900 more student requests at 10.00/s (90 s)" in view.eta.basis
    assert "min_dwell: 50 s left of 60 s" in view.eta.basis
    assert "inconclusive: agreement" in view.eta.basis
    agreement = next(g for g in view.gates if g.name == "agreement")
    assert agreement.n == 100 and agreement.lower is not None and agreement.upper is not None
    assert view.evidence.student_requests == 100 and view.evidence.agreement_compared == 100
    assert view.counters.decisions == {"start": 1, "hold": 1}
    assert view.store.healthy and view.store.pending_events == 0 and view.webhooks.delivered == 2
    assert view.last_event_id == 2 and view.last_reasons[0] == "holding at stage 0 (0 %)"


def test_next_tick_at_follows_the_decision_and_the_interval() -> None:
    spec = SPEC.model_copy(update={"tick_interval_s": 30.0})
    rig = Rig(spec)
    rig.c.start(**OPS)
    assert rig.c.next_tick_at() == T0 + 30
    rig.clock.advance(45)
    rig.c.record(traffic(3000))
    rig.c.tick()
    assert rig.c.next_tick_at() == T0 + 60  # the dwell ends before the next regular tick
    rig.clock.advance(15)
    assert rig.c.tick().action is Action.ADVANCE


def test_operator_actions_are_intents_recorded_with_actor_and_reason() -> None:
    rig = Rig()
    rig.c.start(actor="alice", reason="ship v2")
    rig.step()
    rig.step()
    assert rig.c.status().stage_index == 1  # type: ignore[union-attr]
    status = rig.c.pause(actor="bob", reason="freeze for the launch")
    assert status.intents.pause and status.phase is Phase.PROGRESSING  # written, not yet acted on
    assert rig.step() is Action.PAUSE and rig.c.status().phase is Phase.PAUSED  # type: ignore[union-attr]
    for _ in range(4):
        assert rig.step() is Action.HOLD  # good evidence, but paused: no advance
    assert rig.c.snapshot().eta.seconds is None
    rig.c.set_weight(0.025, actor="carol", reason="student p99 alarm in eu-west")
    assert rig.step() is Action.PAUSE and rig.c.routing().weight == 0.025
    rig.c.resume(actor="bob", reason="launch done")
    assert rig.step() is Action.RESUME and rig.c.routing().weight == 0.05
    final = rig.c.promote(to_full=True, actor="dave", reason="exec sign-off")  # urgent: acts inside the call
    assert (final.phase, final.weight) == (Phase.WATCHING, 1)
    operator = [(e.action, e.actor, e.reason) for e in rig.hooks.sent if e.kind is EventKind.OPERATOR]
    assert operator == [
        ("start", "alice", "ship v2"),
        ("pause", "bob", "freeze for the launch"),
        ("set_weight", "carol", "student p99 alarm in eu-west"),
        ("resume", "bob", "launch done"),
        ("promote", "dave", "exec sign-off"),
    ]
    set_weight = next(e for e in rig.hooks.sent if e.action == "set_weight")
    assert set_weight.payload["weight"] == 0.025 and set_weight.payload["intents"]["pause"] is True
    assert rig.store.events() == rig.hooks.sent


def test_operator_rollback_acts_inside_the_call_and_start_begins_a_new_rollout() -> None:
    rig = Rig().at_stage(2)
    before = rig.c.routing().version
    status = rig.c.rollback("p99 alarms in region eu", actor="erin")
    assert (status.phase, status.weight) == (Phase.ROLLED_BACK, 0)
    assert status.rollback_reason == "operator rollback: p99 alarms in region eu"
    assert [e.action for e in rig.hooks.sent[-2:]] == ["rollback", "rollback"]  # operator, then decision
    assert rig.c.snapshot().counters.rollbacks == {"operator": 1}
    with pytest.raises(IntentError, match="cannot pause: rollout is already rolled_back"):
        rig.c.pause(**OPS)
    again = rig.c.start(actor="erin", reason="fixed tokenizer, second try")
    assert (again.phase, again.stage_index, again.weight) == (Phase.PROGRESSING, 0, 0)
    assert rig.c.routing().version > before and rig.c.snapshot().evidence.student_requests == 0
    with pytest.raises(IntentError, match=r"cannot start: a rollout is already progressing at stage 0 \(0 %\)"):
        rig.c.start(**OPS)


def test_admin_input_is_validated_and_rollback_needs_a_reason() -> None:
    rig = Rig().at_stage(1)
    with pytest.raises(IntentError, match="cannot rollback without a reason"):
        rig.c.rollback("   ", actor="erin")
    with pytest.raises(ValidationError, match="actor"):
        rig.c.pause(actor="", reason="x")
    with pytest.raises(ValidationError, match="manual_weight"):
        rig.c.set_weight(1.5, actor="erin", reason="typo")
    assert rig.c.status().intents.pause is False  # type: ignore[union-attr]  # nothing half-applied
    assert [e.action for e in rig.hooks.sent if e.kind is EventKind.OPERATOR] == ["start", "promote"]


def test_the_controller_never_sees_a_token() -> None:
    """Authentication stays in the admin wrapper: no admin method takes a credential."""
    for name in ("start", "pause", "resume", "promote", "rollback", "set_weight", "snapshot", "events"):
        parameters = inspect.signature(getattr(RolloutController, name)).parameters
        assert not any("token" in p or "auth" in p or "secret" in p for p in parameters), name
    rig = Rig().at_stage(1)
    rig.c.rollback("bad answers", actor="erin")
    dumped = " ".join(e.model_dump_json() for e in rig.store.events())
    assert "token" not in dumped.lower() and "bearer" not in dumped.lower()


def test_events_page_through_the_log() -> None:
    rig = Rig().at_stage(2)  # start + 2 promotes, each an operator and a decision event
    assert [e.id for e in rig.c.events()] == [1, 2, 3, 4, 5, 6]
    assert [(e.kind.value, e.action) for e in rig.c.events(after_id=2, limit=2)] == [
        ("operator", "promote"),
        ("decision", "advance"),
    ]
