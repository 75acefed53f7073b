"""What the controller shows: the routing it publishes and the status an operator reads.

Pure helpers plus the pydantic models the admin API returns (GET status), kept out of
controller.py so that file stays about I/O. Metrics are serving's job (its facade); every
number it needs is plain data on `StatusView`: phase, stage, weight, gate bounds, decision
and rollback counts, store and webhook health.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from rollout.events import EvidenceSummary, summarize
from rollout.evidence import Evidence
from rollout.gates import GateResult, Verdict
from rollout.policy import Action, Decision, Routing
from rollout.spec import RolloutSpec
from rollout.status import Intents, Phase, RolloutStatus
from rollout.webhooks import WebhookStats

_VIEW = ConfigDict(frozen=True, extra="forbid")


class ModelPair(BaseModel):
    """The teacher and student bundle ids a rollout judges."""

    model_config = _VIEW

    teacher_id: str
    student_id: str

    def __str__(self) -> str:
        return f"{self.teacher_id}/{self.student_id}"


class PublishedRouting(Routing):
    """`policy.Routing` plus `version`, which rises whenever the routing may have changed, and
    the model pair it is for (None: no pair known yet, or a controller that does not track one).

    version = 3 x epoch + liveness (0 pending or not started, 1 progressing or paused, 2
    watching, rolled back or completed). The epoch rises whenever weight or stage moves and
    liveness only ever rises within a rollout, so the version never decreases, survives restarts (it is derived from
    the stored status), and a router can ignore any update whose version is not newer.
    """

    version: int = Field(ge=0)
    teacher_id: str | None = None
    student_id: str | None = None
    segments: tuple[str, ...] = ()  # the spec's declared segments (a request naming another is "other")
    dogfood_keys: tuple[str, ...] = ()  # routing keys always sent to the student, kept out of the evidence
    log_disagreements: float = 0.0  # the share of disagreeing shadowed requests routers log (0: none)
    log_agreements: float = 0.0  # ... and of the agreeing ones (an export that represents the traffic)
    log_per_batch: int = 0  # ... and at most this many inputs per batch of observations

    def same_pair(self, other: PublishedRouting) -> bool:
        return (self.teacher_id, self.student_id) == (other.teacher_id, other.student_id)


def routing_version(status: RolloutStatus | None) -> int:
    if status is None:
        return 0
    liveness = 2 if status.settled else (0 if status.phase is Phase.PENDING else 1)
    return 3 * status.epoch + liveness


class TrafficRate:
    """Student observations per second over a sliding window, for the ETA (in-memory only)."""

    def __init__(self, window_s: float, since: float) -> None:
        self.window_s = window_s
        self._since = since
        self._per_second: dict[int, int] = {}

    def add(self, now: float, count: int) -> None:
        second = math.floor(now)
        self._per_second = {s: c for s, c in self._per_second.items() if s > now - self.window_s - 1}
        self._per_second[second] = self._per_second.get(second, 0) + count

    def per_second(self, now: float) -> float:
        start = now - self.window_s
        count = sum(c for s, c in self._per_second.items() if s + 1 > start and s <= now)
        span = max(1.0, min(self.window_s, now - self._since))
        return count / span


class Eta(BaseModel):
    """Earliest time the stage's own conditions allow the next advance, at today's traffic.

    `seconds` is None when it cannot be known (no student traffic, paused, terminal); the
    gates may still hold longer, which `basis` says when any is inconclusive.
    """

    model_config = _VIEW

    seconds: float | None
    at: float | None
    basis: str


def estimate_eta(spec: RolloutSpec, status: RolloutStatus | None, evidence: Evidence, rate: float, now: float) -> Eta:
    if status is None:
        return Eta(seconds=None, at=None, basis="no rollout started")
    if status.terminal:
        return Eta(seconds=None, at=None, basis=f"rollout is {status.phase.value}: no further decisions")
    if status.phase is Phase.WATCHING:
        return Eta(seconds=None, at=None, basis="promoted and watched: a detected change rolls back or alerts")
    if status.phase is Phase.PENDING:
        return Eta(seconds=0.0, at=now, basis="starts on the next tick")
    if status.phase is Phase.PAUSED:
        return Eta(seconds=None, at=None, basis="paused: no advance until resume or promote")
    stage = spec.stages[status.stage_index]
    remaining = max(0, stage.min_requests - evidence.student.requests)
    started = status.stage_started_at if status.stage_started_at is not None else now
    dwell_left = max(0.0, started + stage.min_dwell_s - now)
    dwell = f"min_dwell: {dwell_left:.0f} s left of {stage.min_dwell_s:g} s"
    if remaining and rate <= 0:
        basis = f"unknown: {remaining} more student requests needed and no student traffic observed; {dwell}"
        return Eta(seconds=None, at=None, basis=basis)
    wait_requests = remaining / rate if remaining else 0.0
    seconds = max(dwell_left, wait_requests)
    requests = f"min_requests: {remaining} more student requests at {rate:.2f}/s ({wait_requests:.0f} s)"
    return Eta(seconds=seconds, at=now + seconds, basis=f"{requests}; {dwell}")


def with_gate_caveat(eta: Eta, gates: tuple[GateResult, ...]) -> Eta:
    waiting = [gate.name for gate in gates if gate.verdict is Verdict.INCONCLUSIVE]
    if eta.seconds is None or not waiting:
        return eta
    return eta.model_copy(update={"basis": f"{eta.basis}; then gates must pass (inconclusive: {', '.join(waiting)})"})


class StoreHealth(BaseModel):
    """The state store as the controller last found it; `pending_events` are not yet durable."""

    model_config = _VIEW

    location: str
    journal_mode: str | None = None  # "wal" on a local disk, "delete" on a network filesystem
    term: int | None = None  # the writer term this controller claimed
    fenced: bool = False  # another controller claimed the store: this one no longer writes
    healthy: bool = True
    failures_total: int = 0
    consecutive_failures: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_saved_at: float | None = None
    pending_events: int = 0


class Counters(BaseModel):
    """Since this controller process started (Prometheus-style counters reset on restart)."""

    model_config = _VIEW

    decisions: dict[str, int] = Field(default_factory=dict)
    rollbacks: dict[str, int] = Field(default_factory=dict)


def rollback_cause(decision: Decision) -> str:
    """A low-cardinality label for a rollback: the first failing gate's name, or "operator"."""
    failed = [gate.name for gate in decision.gates if gate.verdict is Verdict.FAIL]
    return failed[0] if failed else "operator"


class StatusView(BaseModel):
    """GET status: where the rollout stands, why, and what happens next."""

    model_config = _VIEW

    now: float
    started: bool
    phase: Phase
    stage_index: int
    stage_count: int
    weight: float
    routing: PublishedRouting
    epoch: int
    ticks: int
    stage_started_at: float | None
    last_transition_at: float | None
    intents: Intents
    rollback_reason: str | None
    message: str
    last_action: Action | None
    last_decision_at: float | None
    last_reasons: tuple[str, ...]
    gates: tuple[GateResult, ...]
    evidence: EvidenceSummary
    student_rate_per_s: float
    eta: Eta
    counters: Counters
    store: StoreHealth
    webhooks: WebhookStats
    last_event_id: int
    deadline_at: float | None = None  # when the stage's deadline takes its action if it still holds
    deadline_passed_at: float | None = None  # the deadline paused (or rolled back) the rollout then
    awaiting_confirmation: int | None = None  # the stage an operator's confirm would let it enter


def status_view(
    spec: RolloutSpec,
    status: RolloutStatus | None,
    evidence: Evidence,
    *,
    now: float,
    routing: PublishedRouting,
    rate: float,
    last: Decision | None,
    gates: tuple[GateResult, ...],
    last_tick_at: float | None,
    counters: Counters,
    store: StoreHealth,
    webhooks: WebhookStats,
    last_event_id: int,
) -> StatusView:
    """GET status from the controller's state (`status` None: no rollout started yet)."""
    shown = status if status is not None else RolloutStatus()
    eta = estimate_eta(spec, status, evidence, rate, now)
    return StatusView(
        now=now,
        started=status is not None,
        phase=shown.phase,
        stage_index=shown.stage_index,
        stage_count=len(spec.stages),
        weight=shown.weight,
        routing=routing,
        epoch=shown.epoch,
        ticks=shown.ticks,
        stage_started_at=shown.stage_started_at,
        last_transition_at=shown.last_transition_at,
        intents=shown.intents,
        rollback_reason=shown.rollback_reason,
        message=shown.message,
        last_action=last.action if last is not None else None,
        last_decision_at=last_tick_at,
        last_reasons=last.reasons if last is not None else (),
        gates=gates,
        evidence=summarize(evidence),
        student_rate_per_s=rate,
        eta=with_gate_caveat(eta, gates),
        counters=counters,
        store=store,
        webhooks=webhooks,
        last_event_id=last_event_id,
        deadline_at=_deadline_at(spec, shown),
        deadline_passed_at=shown.deadline_passed_at,
        awaiting_confirmation=last.awaiting_confirmation if last is not None and status is not None else None,
    )


def _deadline_at(spec: RolloutSpec, status: RolloutStatus) -> float | None:
    marks = [t for t in (status.stage_started_at, status.last_transition_at) if t is not None]
    if status.phase is not Phase.PROGRESSING or not marks or (limit := spec.deadline_s(status.stage_index)) is None:
        return None
    return max(marks) + limit
