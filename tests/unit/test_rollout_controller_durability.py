"""rollout.controller durability: store outages (fake and a real SQLite file) and restarts.

A controller whose store cannot save only holds or rolls back, keeps unsaved events in memory
and writes each exactly once when the store is back; a new controller over the same store
continues at the same stage, weight and evidence, with no event lost or duplicated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import FencedError, SpecError, StoreError
from rollout.events import Event, EventKind
from rollout.evidence import Evidence, Observation, Variant
from rollout.policy import Action
from rollout.spec import RolloutSpec
from rollout.status import Phase, RolloutStatus
from rollout.store import MemoryStateStore, SqliteStateStore, StateStore
from rollout.webhooks import RecordingWebhookSender

WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
SPEC = RolloutSpec.from_mapping(
    {"stages": [{"weight": w, "min_requests": 1000, "min_dwell_s": 60, "shadow_fraction": 0.2} for w in WEIGHTS]}
)
T0 = 1_000_000.0


def traffic(n: int) -> list[Observation]:
    """n student and n teacher observations from a good student."""
    batch = []
    for i in range(n):
        spread = 0.8 + 0.4 * (i % 50) / 49
        batch.append(Observation(variant=Variant.STUDENT, latency_s=0.010 * spread, agreed=i % 200 != 0))
        batch.append(Observation(variant=Variant.TEACHER, latency_s=0.030 * spread))
    return batch


def step(c: RolloutController, clock: FakeClock, seconds: float = 30, n: int = 600) -> Action:
    clock.advance(seconds)
    c.record(traffic(n))
    return c.tick().action


def ids(events: Sequence[Event]) -> list[int]:
    return [e.id for e in events]


def assert_log_is_whole(store: StateStore, hooks: RecordingWebhookSender) -> None:
    """Ids 1..N with no gap and no repeat, and every event went to the webhooks exactly once."""
    logged = store.events(limit=1000)
    assert ids(logged) == list(range(1, len(logged) + 1))
    assert sorted(ids(hooks.sent)) == ids(logged) and hooks.sent == sorted(hooks.sent, key=lambda e: e.id)
    assert {e.id: e for e in hooks.sent} == {e.id: e for e in logged}


# --- store outages ------------------------------------------------------------------------------


def test_store_outage_holds_buffers_events_and_flushes_them_exactly_once() -> None:
    clock, store, hooks = FakeClock(T0), MemoryStateStore(), RecordingWebhookSender()
    c = RolloutController(SPEC, store, clock, hooks)
    c.start(actor="alice", reason="ship v2")
    store.outage = "disk I/O error"
    for _ in range(4):  # stage 0 would advance after two of these steps
        decision_action = step(c, clock)
        assert decision_action is Action.HOLD
    decision = c.tick()
    assert (
        decision.reasons[0]
        == "state store unavailable (5 failed saves in a row): holding instead of advance until a save succeeds"
    )
    assert (c.routing().weight, c.status().stage_index) == (0, 0)  # type: ignore[union-attr]
    c.pause(actor="bob", reason="store is sick")  # accepted in memory; the PAUSE itself waits
    c.resume(actor="bob", reason="never mind")
    view = c.snapshot()
    assert not view.store.healthy and view.store.consecutive_failures == 7 and view.store.failures_total == 7
    assert view.store.last_error == "state store (memory): save failed: disk I/O error"
    assert view.store.pending_events == 3 and view.last_event_id == 5
    with pytest.raises(StoreError):
        c.events()
    assert [(e.kind.value, e.action) for e in hooks.sent[2:]] == [
        ("store", "write_failed"),
        ("operator", "pause"),
        ("operator", "resume"),
    ]  # published at once, but only once: later failed saves add nothing

    store.outage = None
    clock.advance(1)
    assert c.tick().action is Action.ADVANCE  # the first successful save carries everything
    assert [(e.id, e.kind.value, e.action) for e in store.events()] == [
        (1, "operator", "start"),
        (2, "decision", "start"),
        (3, "store", "write_failed"),
        (4, "operator", "pause"),
        (5, "operator", "resume"),
        (6, "store", "recovered"),
        (7, "decision", "advance"),
    ]
    assert store.events(after_id=5)[0].reason.startswith("state store (memory) writable again after 7 failed saves")
    assert c.snapshot().store.healthy and c.snapshot().store.pending_events == 0
    step(c, clock)
    assert_log_is_whole(store, hooks)
    state = store.load()
    assert state is not None and state.status == c.status()


def test_a_rollback_does_not_wait_for_the_store() -> None:
    clock, store, hooks = FakeClock(T0), MemoryStateStore(), RecordingWebhookSender()
    c = RolloutController(SPEC, store, clock, hooks)
    c.start(actor="alice", reason="ship v2")
    c.promote(actor="alice", reason="to 5 %")
    store.outage = "No space left on device"
    clock.advance(1)
    decision = c.record([Observation(variant=Variant.STUDENT, latency_s=5.0, error=True)] * 25)
    assert decision is not None and decision.action is Action.ROLLBACK
    assert c.routing().weight == 0 and c.status().phase is Phase.ROLLED_BACK  # type: ignore[union-attr]
    assert [e.action for e in hooks.sent[-2:]] == ["rollback", "write_failed"]  # alerting is not delayed
    store.outage = None
    clock.advance(1)
    c.tick()
    assert [e.action for e in store.events(after_id=4)] == ["rollback", "write_failed", "recovered"]
    assert_log_is_whole(store, hooks)
    assert store.load().status.phase is Phase.ROLLED_BACK  # type: ignore[union-attr]


def test_an_urgent_intent_does_not_spin_the_tick_loop_during_an_outage() -> None:
    clock, store = FakeClock(T0), MemoryStateStore()
    c = RolloutController(SPEC, store, clock, RecordingWebhookSender())
    c.start(actor="alice", reason="ship v2")
    store.outage = "read-only file system"
    status = c.promote(actor="alice", reason="to 5 %")
    assert status.intents.promote is not None and status.stage_index == 0  # deferred, kept
    assert c.next_tick_at() == T0 + SPEC.tick_interval_s  # not `now` over and over
    store.outage = None
    clock.advance(1)
    assert c.next_tick_at() == T0 + 1  # healthy again: an urgent intent means tick now
    assert c.tick().action is Action.ADVANCE and c.routing().weight == 0.05


class CommitsThenFails(MemoryStateStore):
    """A save that lands but reports failure (the commit's acknowledgement was lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.lie_once = False

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event], *, term: int) -> None:
        super().save(status, evidence, events, term=term)
        if self.lie_once:
            self.lie_once = False
            raise StoreError("state store (memory): save failed: connection reset after COMMIT", self.location)


def test_a_save_that_landed_but_reported_failure_is_not_duplicated() -> None:
    clock, store, hooks = FakeClock(T0), CommitsThenFails(), RecordingWebhookSender()
    c = RolloutController(SPEC, store, clock, hooks)
    c.start(actor="alice", reason="ship v2")
    store.lie_once = True
    c.pause(actor="bob", reason="hold on")  # lands, "fails": the pause event stays pending
    clock.advance(1)
    c.tick()  # the retry carries it again, with write_failed and recovered
    logged = [(e.kind.value, e.action) for e in store.events()]
    assert logged == [
        ("operator", "start"),
        ("decision", "start"),
        ("operator", "pause"),  # saved by the save that "failed", and not again by the retry
        ("store", "write_failed"),
        ("store", "recovered"),
        ("decision", "pause"),
    ]
    assert_log_is_whole(store, hooks)


def test_a_real_sqlite_file_that_vanishes_and_returns(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    clock, hooks = FakeClock(T0), RecordingWebhookSender()
    store = SqliteStateStore(folder / "rollout.db")
    c = RolloutController(SPEC, store, clock, hooks)
    c.start(actor="alice", reason="ship v2")
    folder.rename(tmp_path / "elsewhere")  # e.g. a volume unmounted under the controller
    for _ in range(3):
        assert step(c, clock) is Action.HOLD
    view = c.snapshot()
    assert not view.store.healthy and "unable to open database file" in (view.store.last_error or "")
    assert str(folder / "rollout.db") in (view.store.last_error or "")
    (tmp_path / "elsewhere").rename(folder)
    assert step(c, clock) is Action.ADVANCE
    assert [e.action for e in store.events()] == ["start", "start", "write_failed", "recovered", "advance"]
    assert_log_is_whole(store, hooks)


# --- restarts -----------------------------------------------------------------------------------


def test_restart_over_the_same_sqlite_file_continues_with_nothing_lost_or_repeated(tmp_path: Path) -> None:
    path = tmp_path / "rollout.db"
    clock, hooks = FakeClock(T0), RecordingWebhookSender()
    first = RolloutController(SPEC, SqliteStateStore(path), clock, hooks)
    first.start(actor="alice", reason="ship v2")
    while first.status().stage_index < 2:  # type: ignore[union-attr]
        step(first, clock)
    step(first, clock, seconds=20, n=300)  # halfway through stage 2: some evidence, dwell running
    before = (first.status(), first.routing(), first.snapshot().evidence, first.events(limit=1000))
    stored = SqliteStateStore(path).load()
    assert stored is not None and stored.status == before[0]
    del first  # the replica dies; Ray builds a new one over the same file

    clock.advance(5)
    again = RolloutController(SPEC, SqliteStateStore(path), clock, hooks)
    assert again.status() == before[0] and again.routing() == before[1]
    assert again.snapshot().evidence == before[2]  # agreement and this stage's counts both survive
    resumed = again.events(limit=1000)
    assert resumed[:-1] == before[3]
    assert (resumed[-1].id, resumed[-1].kind, resumed[-1].action) == (
        len(before[3]) + 1,
        EventKind.CONTROLLER,
        "resumed",
    )
    assert resumed[-1].reason.startswith("controller resumed a progressing rollout at stage 2 (10 %), epoch 2")

    started = before[0].stage_started_at
    assert started is not None
    clock.advance(started + 60 - clock.now() - 1)
    again.record(traffic(800))
    assert again.tick().action is Action.HOLD  # the dwell clock did not restart with the process
    clock.advance(1)
    assert again.tick().action is Action.ADVANCE and again.routing().weight == 0.25
    while not again.status().settled:  # type: ignore[union-attr]
        step(again, clock)
    assert again.status().phase is Phase.WATCHING  # type: ignore[union-attr]
    store = SqliteStateStore(path)
    assert_log_is_whole(store, hooks)
    moves = [(e.action, e.payload["to"]["weight"]) for e in store.events(limit=1000) if e.kind is EventKind.DECISION]
    assert moves == [("start", 0)] + [("advance", w) for w in WEIGHTS[1:]] + [("complete", 1.0)]


# --- one writer ------------------------------------------------------------------------------------


def test_a_second_controller_fences_the_first_and_no_saved_event_is_lost(tmp_path: Path) -> None:
    """A RayService upgrade: a new controller opens the same file while the old one still runs."""
    clock, hooks, new_hooks = FakeClock(T0), RecordingWebhookSender(), RecordingWebhookSender()
    old = RolloutController(SPEC, SqliteStateStore(tmp_path / "r.db"), clock, hooks, holder="old-cluster")
    old.start(actor="alice", reason="ship v2")
    assert step(old, clock) is Action.HOLD and step(old, clock) is Action.ADVANCE
    saved_by_old = ids(old.events(limit=1000))

    new = RolloutController(SPEC, SqliteStateStore(tmp_path / "r.db"), clock, new_hooks, holder="new-cluster")
    resumed = new.events(limit=1000)[-1]
    assert (resumed.action, resumed.payload["claim"]["previous_holder"]) == ("resumed", "old-cluster")
    assert "writer term 2, taken over from old-cluster" in resumed.reason

    for _ in range(3):  # the old one would advance again; fenced, it holds and writes nothing
        assert step(old, clock) is Action.HOLD
    view = old.snapshot().store
    assert view.fenced and view.term == 1 and "new-cluster holds it at term 2" in (view.last_error or "")
    assert old.routing().weight == 0.05
    with pytest.raises(FencedError, match="no longer writes"):
        old.pause(actor="bob", reason="hold on")
    published = len(hooks.sent)
    failures = [Observation(variant=Variant.STUDENT, latency_s=0.01, error=True) for _ in range(50)]
    assert old.record(failures).action is Action.ROLLBACK  # type: ignore[union-attr]
    assert old.routing().weight == 0.0 and len(hooks.sent) == published  # safe side taken, nothing published
    assert ids(old.events(limit=1000)) == ids(SqliteStateStore(tmp_path / "r.db").events(limit=1000))

    assert [step(new, clock) for _ in range(2)] == [Action.HOLD, Action.ADVANCE] and new.routing().weight == 0.1
    logged = SqliteStateStore(tmp_path / "r.db").events(limit=1000)
    assert set(saved_by_old) <= set(ids(logged)) and ids(logged) == list(range(1, len(logged) + 1))
    assert {e.payload.get("claim", {}).get("holder") for e in logged if e.action == "resumed"} == {"new-cluster"}


def test_an_intent_on_a_controller_that_was_fenced_unnoticed_is_undone() -> None:
    clock, store = FakeClock(T0), MemoryStateStore()
    old = RolloutController(SPEC, store, clock, RecordingWebhookSender(), holder="old")
    old.start(actor="alice", reason="ship v2")
    RolloutController(SPEC, store, clock, RecordingWebhookSender(), holder="new")
    before = old.status()
    with pytest.raises(FencedError, match="new holds it at term 2"):
        old.set_weight(0.5, actor="bob", reason="more traffic")
    assert old.status() == before and old.routing().weight == 0.0
    assert [e.action for e in store.events()] == ["start", "start", "resumed"]  # the operator's, the tick's


def test_a_new_spec_is_adopted_in_place_unless_it_moves_the_live_stage() -> None:
    clock, store = FakeClock(T0), MemoryStateStore()
    c = RolloutController(SPEC, store, clock, RecordingWebhookSender())
    c.start(actor="alice", reason="ship v2")
    assert [step(c, clock) for _ in range(4)] == [Action.HOLD, Action.ADVANCE] * 2 and c.routing().weight == 0.1
    c.adopt_spec(SPEC.model_copy(update={"tick_interval_s": 2.0}))
    assert c.routing().weight == 0.1 and c.snapshot().store.term == 1  # same stage, same writer
    assert store.events()[-1].action == "spec_changed" and c.next_tick_at() <= clock.now() + 2.0
    moved = SPEC.model_dump()
    moved["stages"][2]["weight"] = 0.2
    with pytest.raises(SpecError, match=r"stages\.2\.weight: .* at stage 2 \(10 %\), the new spec puts it at 20 %"):
        c.adopt_spec(RolloutSpec.from_mapping(moved))
    with pytest.raises(SpecError, match="the live rollout is at stage 2, the new spec has 2 stages"):
        c.adopt_spec(RolloutSpec.from_mapping({"stages": [{"weight": 0}, {"weight": 1}]}))
    assert c.routing().weight == 0.1 and store.events()[-1].action == "spec_changed"


def test_restart_with_a_spec_that_lost_the_stored_stage_is_refused() -> None:
    store = MemoryStateStore()
    term = store.claim("an-older-controller", T0).term
    store.save(RolloutStatus(phase=Phase.PROGRESSING, stage_index=4, weight=0.5), Evidence(), [], term=term)
    short = RolloutSpec.from_mapping({"stages": [{"weight": 0}, {"weight": 1}]})
    with pytest.raises(SpecError, match=r"stored status\.stage_index 4 is beyond the spec's 2 stages"):
        RolloutController(short, store, FakeClock(T0), RecordingWebhookSender())


def test_a_store_that_cannot_load_stops_the_controller_from_starting() -> None:
    store = MemoryStateStore()
    store.outage = "permission denied"
    with pytest.raises(StoreError, match="claim failed: permission denied"):
        RolloutController(SPEC, store, FakeClock(T0), RecordingWebhookSender())


# --- concurrency ----------------------------------------------------------------------------------


def test_concurrent_record_tick_and_admin_calls_keep_state_and_log_consistent() -> None:
    """The Ray wrapper may call from several threads at once; one lock keeps every call whole."""
    clock, store, hooks = FakeClock(T0), MemoryStateStore(), RecordingWebhookSender()
    c = RolloutController(SPEC, store, clock, hooks)
    c.start(actor="alice", reason="ship v2")
    errors: list[BaseException] = []

    def routers() -> None:
        for _ in range(40):
            c.record(traffic(50))

    def ticker() -> None:
        for _ in range(40):
            clock.advance(5)
            c.tick()
            c.snapshot()

    def operator() -> None:
        for i in range(10):
            c.pause(actor="bob", reason=f"pause {i}")
            c.resume(actor="bob", reason=f"resume {i}")

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # surfaced below
                errors.append(error)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in (routers, routers, ticker, operator)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    c.tick()
    assert_log_is_whole(store, hooks)
    state = store.load()
    current = c.status()
    assert state is not None and current is not None
    volatile = {"ticks", "message"}  # a HOLD with nothing new to save does not rewrite the record
    assert state.status.model_dump(exclude=volatile) == current.model_dump(exclude=volatile)
    assert c.snapshot().evidence.agreement_compared == state.evidence.agreement.compared
    assert sum(1 for e in store.events(limit=1000) if e.kind is EventKind.OPERATOR) == 21
