"""The rollout controller: the I/O around the pure policy (no Ray here; serving wraps it).

It folds router observations into evidence, ticks `policy.decide`, applies the decision,
persists status + evidence + events in one store transaction, fires webhooks and publishes
the routing. Every decision comes from `rollout.policy`; this class only moves data. Clock,
store and webhook sender are injected, so a test is a tick-by-tick scenario on a FakeClock.

Driving it (the Ray Serve deployment is a thin shell over these calls):

- routers push `record(observations)`; when `policy.urgent` says so (the fast-rollback trip
  wire, a pending start, an operator rollback or promote) it ticks at once, inside the call:
  that is how a burst of hard failures reaches weight 0 without waiting for the tick loop;
- the wrapper loops `tick()`, sleeping until `next_tick_at()` (the controller never sleeps);
- routers follow `routing()` (a request held until it changes) and adopt any update whose
  `version` is newer than theirs;
- labels come back through `feedback(items)` (rollout/feedback.py: signed request ids), folded
  into the pooled accuracy evidence and saved at once;
- admin endpoints call `start/pause/resume/promote/rollback/set_weight` with who and why
  (authentication stays in the wrapper: this class never sees a token), `snapshot()` for
  GET status and `events()` for GET events.

One writer. A controller claims the store when constructed (the next writer term), so a
restarted or upgraded controller takes over from the one before it, which is fenced: its
saves are refused, it never advances again (a rollback still takes effect in its memory:
weight 0 is safe), and its intents are refused with the new holder named.

Durability. Restart = construct a new controller over the same store: it reloads status,
evidence and the last event id and continues at the same stage and weight. When a save fails
(StoreError) the controller keeps running from memory but only holds or rolls back (rolling
back needs no permission: weight 0 is the safe side); a start, advance, completion, pause or
resume waits, its intent kept, until a save succeeds. Unsaved events stay in memory with
their ids and go out in the next successful save, exactly once. A tick saves only when
something is new (observations, a change, events): a HOLD with nothing new leaves the stored
record (its `ticks` and `message`) as it was. At most the observations recorded since the
last save are lost if the process dies (a tick's worth when healthy).

Thread safety: one re-entrant lock around every method; each call is short (no sleeping, no
network: webhooks are queued, and a store save is one small local transaction).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence

from rollout.clock import Clock
from rollout.disagreements import DisagreementSink, LoggedDisagreement
from rollout.errors import FeedbackError, SpecError
from rollout.events import Event, EventKind, summarize
from rollout.evidence import Evidence, Observation, Variant, add_labels, add_observations, rollover
from rollout.feedback import FeedbackDesk, FeedbackItem, FeedbackResult
from rollout.gates import GateResult
from rollout.intents import OperatorIntents
from rollout.journal import Draft, Journal
from rollout.policy import Action, Decision, apply, check_spec_change, decide, deferred, idle, urgent
from rollout.policy import routing as policy_routing
from rollout.smoke import SmokeResult
from rollout.spec import RolloutSpec, percent
from rollout.status import (
    Phase,
    RolloutStatus,
)
from rollout.store import Claim, StateStore, StoredState, default_holder
from rollout.views import (
    Counters,
    ModelPair,
    PublishedRouting,
    StatusView,
    TrafficRate,
    rollback_cause,
    routing_version,
    status_view,
)
from rollout.watching import watch_evidence
from rollout.webhooks import WebhookSender

log = logging.getLogger(__name__)


class RolloutController(OperatorIntents):
    """One rollout's controller; see the module docstring for how a wrapper drives it.

    Raises StoreError when the store cannot be loaded, and SpecError when the stored status
    points past the spec's stages (a spec swapped under a live rollout).
    """

    def __init__(
        self,
        spec: RolloutSpec,
        store: StateStore,
        clock: Clock,
        webhooks: WebhookSender,
        *,
        rate_window_s: float = 60.0,
        holder: str | None = None,
        pair: ModelPair | None = None,
        desk: FeedbackDesk | None = None,
        smoke_test: bool = False,
        disagreements: DisagreementSink | None = None,
    ) -> None:
        self._disagreements = disagreements  # where the spec's disagreement log goes (None: nowhere)
        self._smoke_test = smoke_test  # the wrapper can reach the served models to run the spec's smoke test
        self._spec, self._clock, self._webhooks = self._judged(spec), clock, webhooks
        self.pair = pair  # the models this rollout judges; routers check answers against it
        self._desk = desk  # None: labels are refused (no receipt key or label names for this pair)
        self._lock = threading.RLock()
        now = clock.now()
        self._status: RolloutStatus | None = None
        self._evidence = Evidence()
        self._dirty = False  # memory holds state the store has not saved yet
        self._last_decision: Decision | None = None
        self._last_gates: tuple[GateResult, ...] = ()  # the latest evaluation, kept through terminal holds
        self._last_tick_at: float | None = None
        self._decisions: Counter[str] = Counter()
        self._rollbacks: Counter[str] = Counter()
        self._rate = TrafficRate(rate_window_s, since=now)
        claim = store.claim(holder or default_holder(), now)  # from here on the previous writer is fenced
        state = store.load()
        self._journal = Journal(store, webhooks, claim.term, state.last_event_id if state is not None else 0)
        if state is not None:
            self._resume(state, claim, now)

    def _resume(self, state: StoredState, claim: Claim, now: float) -> None:
        status = state.status
        if status.stage_index >= len(self._spec.stages):
            count = len(self._spec.stages)
            raise SpecError(f"stored status.stage_index {status.stage_index} is beyond the spec's {count} stages")
        self._status = status
        self._evidence = watch_evidence(self._spec, status, rollover(state.evidence, status.epoch))
        self._dirty = True
        reason = (
            f"controller resumed a {status.phase.value} rollout at stage {status.stage_index} "
            f"({percent(status.weight)}), epoch {status.epoch}, student n={self._evidence.student.requests}, "
            f"last event id {state.last_event_id}; writer term {claim.term}"
            + (f", taken over from {claim.previous_holder}" if claim.previous_holder else "")
        )
        payload = {
            **status.position(),
            "evidence": summarize(self._evidence).model_dump(),
            "claim": claim.model_dump(mode="json"),
        }
        self._journal.commit(Draft(EventKind.CONTROLLER, "resumed", reason, payload), now)
        self._save(now)

    def _save(self, now: float) -> None:
        """Persist the in-memory state (and pending events) if anything is unsaved."""
        if self._status is not None and (self._dirty or self._journal.has_pending):
            self._dirty = not self._journal.persist(now, self._status, self._evidence)

    # --- ticking ----------------------------------------------------------------------------

    def record(self, observations: Sequence[Observation]) -> Decision | None:
        """Fold a router batch into the evidence; tick at once when `policy.urgent` says so.

        Returns the decision of that immediate tick, or None when no tick was due.
        """
        with self._lock:
            now = self._clock.now()
            if not observations:
                return None
            self._evidence = add_observations(self._evidence, observations, now)
            self._log_disagreements(observations)
            if self._desk is not None and self._spec.accuracy is not None:  # accuracy: null keeps none
                self._desk.keep(observations, now, self._spec.max_label_age_s)
            self._rate.add(now, sum(o.variant is Variant.STUDENT for o in observations))
            self._dirty = True
            if self._status is not None and urgent(self._spec, self._status, self._evidence, now):
                return self._tick(now)
            return None

    def _log_disagreements(self, observations: Sequence[Observation]) -> None:
        """Append the batch's disagreements (at most the spec's `per_batch`) to the log."""
        log, sink = self._spec.disagreements, self._disagreements
        if log is None or sink is None or self._status is None:
            return
        entries = [entry for observation in observations for entry in observation.disagreements][: log.per_batch]
        if entries:
            sink.append(entries, self._status.stage_index)

    def disagreements(self, after: int = 0, limit: int = 1000) -> list[LoggedDisagreement]:
        """Logged disagreements with seq > `after`, oldest first (none without a log)."""
        with self._lock:
            return [] if self._disagreements is None else self._disagreements.entries(after, limit)

    def feedback(self, items: Sequence[FeedbackItem]) -> FeedbackResult:
        """Take a batch of labels (all or nothing: a FeedbackError names the first bad item) into
        the accuracy evidence, saved at once; the next tick judges it."""
        with self._lock:
            if self._desk is None:
                raise FeedbackError("feedback is not set up for this rollout (no receipt key or label names)")
            now = self._clock.now()
            outcomes = self._desk.take(items, now, self._spec.max_label_age_s)
            self._evidence = add_labels(self._evidence, outcomes)
            self._dirty = True
            self._save(now)
            paired = sum(outcome.paired is not None for outcome in outcomes)
            return FeedbackResult(requests=len(items), labels=len(outcomes), paired=paired)

    def tick(self) -> Decision:
        """Decide, apply, persist (status + evidence + the decision's event, atomically), notify."""
        with self._lock:
            return self._tick(self._clock.now())

    def _tick(self, now: float) -> Decision:
        self._last_tick_at = now
        status = self._status
        if status is None:
            return self._count(idle(self._after(now)))
        decision = decide(self._spec, status, self._evidence, now)
        new_status = apply(status, decision, now)
        new_evidence = watch_evidence(self._spec, new_status, rollover(self._evidence, new_status.epoch))
        if decision.action is Action.HOLD:
            self._adopt(decision, new_status, new_evidence)
            self._save(now)
            return decision
        draft = self._decision_draft(decision, status, new_status)
        if decision.action is Action.ROLLBACK:  # weight 0 needs no permission, durable or not
            self._adopt(decision, new_status, new_evidence)
            self._journal.commit(draft, now)
            self._dirty = True
            self._save(now)
            return decision
        if self._journal.persist(now, new_status, new_evidence, [draft]):
            self._dirty = False
            return self._adopt(decision, new_status, new_evidence)
        held = deferred(decision, status, self._journal.health.consecutive_failures, self._after(now))
        message = f"{held.action.value}: " + "; ".join(held.reasons)  # not `apply`: nothing moves, no dwell restart
        kept = status.model_copy(update={"ticks": status.ticks + 1, "message": message})
        return self._adopt(held, kept, self._evidence)

    def _adopt(self, decision: Decision, status: RolloutStatus, evidence: Evidence) -> Decision:
        """Make `decision` (already applied into `status`, `evidence`) the state in memory."""
        self._status, self._evidence = status, evidence
        if decision.action is not Action.HOLD:
            log.info("rollout %s: %s", decision.action.value, "; ".join(decision.reasons))
        return self._count(decision)

    def _count(self, decision: Decision) -> Decision:
        self._last_decision = decision
        self._last_gates = decision.gates or self._last_gates
        self._decisions[decision.action.value] += 1
        if decision.action is Action.ROLLBACK:
            self._rollbacks[rollback_cause(decision)] += 1
        return decision

    def _decision_draft(self, decision: Decision, before: RolloutStatus, after: RolloutStatus) -> Draft:
        payload = {
            "decision": decision.model_dump(mode="json"),
            "evidence": summarize(self._evidence).model_dump(),
            "from": before.position(),
            "to": after.position(),
        }
        return Draft(EventKind.DECISION, decision.action.value, "; ".join(decision.reasons), payload)

    def _after(self, now: float) -> float:
        return now + self._spec.tick_interval_s

    def next_tick_at(self) -> float:
        """When the wrapper should call `tick()` next: now if urgent, else the decision's own
        `next_check_at`, and never later than one tick interval after the last tick.

        While the store is failing an urgent intent (a promote, a start) cannot be acted on,
        so it waits for the regular interval instead of spinning the wrapper's loop.
        """
        with self._lock:
            now = self._clock.now()
            live = self._status is not None and self._journal.health.healthy
            if live and self._status is not None and urgent(self._spec, self._status, self._evidence, now):
                return now
            regular = self._after(self._last_tick_at if self._last_tick_at is not None else now)
            wanted = self._last_decision.next_check_at if self._last_decision is not None else None
            return regular if wanted is None else min(wanted, regular)

    def adopt_spec(self, spec: RolloutSpec) -> None:
        """Judge by `spec` from the next tick on, in place: same stage, weight, evidence and writer
        term (a rebuilt controller would claim the store from this one). SpecError when the new
        spec drops the live stage or gives it another weight."""
        spec = self._judged(spec)
        with self._lock:
            if spec == self._spec:
                return
            self._require_writer()
            check_spec_change(self._status, self._spec, spec)
            now, before = self._clock.now(), self._spec
            self._spec = spec
            reason = f"rollout spec changed in place: {len(before.stages)} -> {len(spec.stages)} stages"
            self._journal.commit(
                Draft(EventKind.CONTROLLER, "spec_changed", reason, {"spec": spec.model_dump(mode="json")}), now
            )
            self._save(now)

    def _judged(self, spec: RolloutSpec) -> RolloutSpec:
        """The spec as this controller applies it: without a smoke test where nothing can run one
        (no served models: the simulation, unit tests)."""
        return spec if self._smoke_test or spec.smoke is None else spec.model_copy(update={"smoke": None})

    # --- the smoke test before stage 0 ----------------------------------------------------------

    def smoke_due(self) -> bool:
        """Whether a pending rollout waits for the served models' smoke test (rollout/smoke.py)."""
        with self._lock:
            status = self._status
            return (
                status is not None
                and status.phase is Phase.PENDING
                and self._spec.smoke is not None
                and (status.smoke is None)
            )

    def record_smoke(self, result: SmokeResult) -> None:
        """The wrapper's smoke test result: logged, saved, and acted on at once (stage 0, or a
        rollback naming how far the served models were from their registered selves)."""
        with self._lock:
            if not self.smoke_due() or self._status is None:
                return  # a result for a rollout that has moved on
            now = self._clock.now()
            self._status = self._status.model_copy(update={"smoke": result})
            self._dirty = True
            self._journal.commit(Draft(EventKind.CONTROLLER, "smoke_test", result.message, result.model_dump()), now)
            self._save(now)
            self._tick(now)

    # --- reading ----------------------------------------------------------------------------

    def routing(self) -> PublishedRouting:
        """The weight and shadow fraction routers should use, with a never-decreasing version."""
        with self._lock:
            ids = self.pair.model_dump() if self.pair is not None else {}
            ids |= {"dogfood_keys": self._spec.dogfood_keys}  # a rollout or not: the spec names them
            if (log := self._spec.disagreements) is not None and self._disagreements is not None:
                ids |= {"log_disagreements": log.sample, "log_agreements": log.agreeing, "log_per_batch": log.per_batch}
            if self._status is None:
                return PublishedRouting(weight=0.0, shadow_fraction=0.0, version=0, **ids)
            current = policy_routing(self._spec, self._status)
            segments = self._spec.segments.names if self._spec.segments is not None else ()
            version = routing_version(self._status)
            return PublishedRouting(**current.model_dump(), version=version, segments=segments, **ids)

    def status(self) -> RolloutStatus | None:
        """The status record as it stands in memory (None before the first start)."""
        with self._lock:
            return self._status

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        """Logged events with id > `after_id`, oldest first, including ones not yet saved.

        Raises StoreError when the store cannot be read.
        """
        with self._lock:
            return self._journal.events(after_id, limit)

    def snapshot(self) -> StatusView:
        """Everything GET status shows; see `views.StatusView`."""
        with self._lock:
            now = self._clock.now()
            return status_view(
                self._spec,
                self._status,
                self._evidence,
                now=now,
                routing=self.routing(),
                rate=self._rate.per_second(now),
                last=self._last_decision,
                gates=self._last_gates,
                last_tick_at=self._last_tick_at,
                counters=Counters(decisions=dict(self._decisions), rollbacks=dict(self._rollbacks)),
                store=self._journal.health,
                webhooks=self._webhooks.stats(),
                last_event_id=self._journal.last_id,
            )
