"""The watch after promotion, through the controller: a promoted student is watched, a drop in
agreement rolls it back (or alerts), operators can still roll back or start anew, and a
restarted controller resumes the detectors where they were."""

from __future__ import annotations

import random

import pytest

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import IntentError
from rollout.events import EventKind
from rollout.evidence import Observation, Variant
from rollout.policy import Action
from rollout.spec import RolloutSpec
from rollout.status import Phase
from rollout.store import MemoryStateStore
from rollout.webhooks import RecordingWebhookSender

OPS = {"actor": "alice@example.com", "reason": "ship student v2"}


def spec(**watch: object) -> RolloutSpec:
    return RolloutSpec.from_mapping({"watch": {"shadow_fraction": 0.1, **watch}})


def compared(rng: random.Random, n: int, agreement: float) -> list[Observation]:
    """n shadowed requests at 100 %: the student served, the teacher compared."""
    batch = []
    for _ in range(n):
        agreed = rng.random() < agreement
        label = "negative" if rng.random() < 0.5 else "positive"
        batch.append(Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=agreed, by_class=((label, agreed),)))
        batch.append(Observation(variant=Variant.TEACHER, latency_s=0.03))
    return batch


class Rig:
    def __init__(self, rollout_spec: RolloutSpec) -> None:
        self.spec, self.clock, self.store = rollout_spec, FakeClock(1_000.0), MemoryStateStore()
        self.hooks = RecordingWebhookSender()
        self.c = RolloutController(rollout_spec, self.store, self.clock, self.hooks)
        self.rng = random.Random(4)

    def promoted(self) -> Rig:
        self.c.start(**OPS)
        status = self.c.promote(to_full=True, actor="alice@example.com", reason="signed off")
        assert (status.phase, status.weight) == (Phase.WATCHING, 1.0)
        return self

    def traffic(self, n: int, agreement: float) -> None:
        for _ in range(n // 100):
            self.clock.advance(1.0)
            self.c.record(compared(self.rng, 100, agreement))
            self.c.tick()


def test_a_promoted_student_is_watched_with_the_watch_share_compared() -> None:
    rig = Rig(spec()).promoted()
    assert rig.c.routing().shadow_fraction == 0.1
    rig.traffic(3_000, agreement=0.99)
    view = rig.c.snapshot()
    assert view.phase is Phase.WATCHING and view.eta.seconds is None
    watch = view.gates[0]
    assert (watch.name, watch.verdict.value, watch.n) == ("watch", "pass", 3_000)
    assert "no change detected over n=3000" in watch.message and "floor 0.9700" in watch.message


def test_without_a_watch_a_promoted_rollout_is_completed() -> None:
    rig = Rig(RolloutSpec.from_mapping({"watch": None}))
    rig.c.start(**OPS)
    status = rig.c.promote(to_full=True, actor="alice@example.com", reason="signed off")
    assert status.phase is Phase.COMPLETED and rig.c.routing().shadow_fraction == 0


def test_a_drop_in_agreement_rolls_back_at_once_with_the_numbers() -> None:
    rig = Rig(spec()).promoted()
    rig.traffic(3_000, agreement=0.99)
    rig.traffic(2_000, agreement=0.88)
    status = rig.c.status()
    assert status is not None and (status.phase, status.weight) == (Phase.ROLLED_BACK, 0.0)
    assert status.rollback_reason is not None and "watch: change detected in agreement" in status.rollback_reason
    rollback = [e for e in rig.hooks.sent if e.kind is EventKind.DECISION][-1]
    assert rollback.action == "rollback"
    gates = {g["name"]: g for g in rollback.payload["decision"]["gates"]}
    assert gates["watch"]["verdict"] == "fail" and gates["watch"]["estimate"] >= 1.0
    assert rig.c.snapshot().counters.rollbacks == {"watch": 1}


def test_alert_mode_alerts_once_per_stream_and_keeps_the_student() -> None:
    rig = Rig(spec(action="alert")).promoted()
    rig.traffic(2_000, agreement=0.99)
    rig.traffic(4_000, agreement=0.85)
    alerts = [e for e in rig.hooks.sent if e.action == "alert"]
    assert alerts and "change detected in agreement" in " ".join(e.reason for e in alerts)
    status = rig.c.status()
    assert status is not None and (status.phase, status.weight) == (Phase.WATCHING, 1.0)
    stored = rig.store.load()
    assert stored is not None and stored.evidence.watch is not None
    streams = [alarm.stream for alarm in stored.evidence.watch.alarms]
    assert len(streams) == len(set(streams)) == status.watch_alarms  # each stream once, each alarm acted on
    assert rig.c.tick().action is Action.HOLD


def test_operators_may_roll_back_or_start_anew_but_not_pause_a_watched_student() -> None:
    rig = Rig(spec()).promoted()
    with pytest.raises(IntentError, match="cannot pause: the student is promoted and watched"):
        rig.c.pause(**OPS)
    status = rig.c.rollback("p99 complaints", actor="bob")
    assert status.phase is Phase.ROLLED_BACK and rig.c.routing().shadow_fraction == 0
    rig = Rig(spec()).promoted()
    assert rig.c.start(**OPS).phase is Phase.PROGRESSING  # a new student replaces the watched one


def test_a_restarted_controller_resumes_the_detectors() -> None:
    rig = Rig(spec()).promoted()
    rig.traffic(2_000, agreement=0.99)
    before = rig.c.snapshot().gates[0].n
    again = RolloutController(rig.spec, rig.store, rig.clock, rig.hooks)
    assert again.status() is not None and again.status().phase is Phase.WATCHING  # type: ignore[union-attr]
    rig.c = again
    rig.traffic(300, agreement=0.99)
    assert rig.c.snapshot().gates[0].n == before + 300
