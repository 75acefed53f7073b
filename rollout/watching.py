"""The watch after promotion: what a tick decides while the promoted student is watched.

When the last stage completes and the spec has a `watch`, the rollout enters the watching
phase: the student serves everything, `watch.shadow_fraction` of requests are still compared
with the teacher, and the detectors of rollout/watch.py read every compared pair and every
label. A tick then, first match wins: the fast-rollback trip wire or an operator rollback
rolls back; an alarm the tick has not acted on yet takes the watch's action (roll back, or an
ALERT that moves nothing); otherwise it holds, watching.
"""

from __future__ import annotations

from rollout.decision import Action, Decision, rollback_decision, stay
from rollout.evidence import Agreement, Evidence
from rollout.spec import OTHER_SEGMENT, AgreementGate, RolloutSpec, WatchSpec
from rollout.stats import bernoulli_cs
from rollout.status import Phase, RolloutStatus
from rollout.verdict import GateResult, Verdict
from rollout.watch import AGREEMENT, Alarm, WatchState, start_watch

MIN_FLOOR = 0.05
"""No floor below this: a group promoted on almost no evidence is watched against 5 %."""


def watch_evidence(spec: RolloutSpec, status: RolloutStatus, evidence: Evidence) -> Evidence:
    """`evidence` with detectors exactly while `status` is watching: fresh ones on entering the
    phase (built from the spec's gates), none after it."""
    if status.phase is not Phase.WATCHING or spec.watch is None:
        return evidence if evidence.watch is None else evidence.model_copy(update={"watch": None})
    if evidence.watch is not None:
        return evidence
    state = start_watch(
        spec.watch.arl,
        _floors(spec, spec.watch, evidence),
        accuracy_margin=spec.accuracy.margin if spec.accuracy is not None else None,
        classes=spec.agreement_by_class.classes if spec.agreement_by_class is not None else 0,
        segments=(*spec.segments.names, OTHER_SEGMENT) if spec.segments is not None else (),
    )
    return evidence.model_copy(update={"watch": state})


def _floors(spec: RolloutSpec, watch: WatchSpec, evidence: Evidence) -> dict[str, float]:
    """The agreement each watched stream must keep: the watch's `agreement_floor` when set,
    else the gate's threshold (the class and segment guards' for theirs), lowered to what the
    promoted student was shown to keep (its lower confidence bound at promotion) where that is
    lower: the watch looks for a change from what was promoted, and a student that accuracy
    promoted may agree less than the agreement threshold."""
    gate = spec.agreement or AgreementGate()
    if watch.agreement_floor is not None:
        floors = {AGREEMENT: watch.agreement_floor}
    else:
        floors = {AGREEMENT: _floor(gate.threshold, evidence.agreement, gate.alpha)}
    if spec.agreement_by_class is not None:
        guard = spec.agreement_by_class
        floors["class"] = guard.threshold
        for label, counts in evidence.classes.items():
            floors[f"class:{label}"] = _floor(guard.threshold, counts, guard.alpha / guard.classes)
    if spec.segments is not None:
        segments = spec.segments
        floors["segment"] = segments.threshold
        for name, segment in evidence.segments.items():
            floors[f"segment:{name}"] = _floor(segments.threshold, segment.agreement, segments.alpha)
    return floors


def _floor(threshold: float, counts: Agreement, alpha: float) -> float:
    if not counts.compared:
        return threshold
    shown = bernoulli_cs(counts.agreed, counts.compared, alpha).lower
    return max(MIN_FLOOR, min(threshold, shown))


def new_alarms(status: RolloutStatus, evidence: Evidence) -> tuple[Alarm, ...]:
    """The watch's alarms no tick has acted on yet."""
    if status.phase is not Phase.WATCHING or evidence.watch is None:
        return ()
    return evidence.watch.alarms[status.watch_alarms :]


def watch_gate(state: WatchState | None, acted: int) -> GateResult:
    """The watch as a gate result, for status, metrics and events: FAIL on an alarm not yet acted
    on, else PASS (no change detected); `estimate` is the stream nearest its alarm threshold, as
    a share of it (1 = alarm)."""
    if state is None:
        return GateResult(name="watch", verdict=Verdict.INCONCLUSIVE, n=0, threshold=1.0, message="watch: not started")
    agreement = state.streams[AGREEMENT]
    nearest = max(state.streams, key=lambda key: state.streams[key].score / state.streams[key].threshold(state.arl))
    share = state.streams[nearest].score / state.streams[nearest].threshold(state.arl)
    unseen = state.alarms[acted:]
    if unseen:
        alarm = unseen[0]
        more = f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""
        message = alarm.message + more
        return GateResult(
            name="watch",
            verdict=Verdict.FAIL,
            n=alarm.n,
            estimate=alarm.score / alarm.threshold,
            threshold=1.0,
            message=message,
        )
    observed = f"agreement {1.0 - agreement.total / agreement.n:.4f}" if agreement.n else "no compared answers yet"
    message = (
        f"watch: no change detected over n={agreement.n} compared answers ({observed}, floor "
        f"{state.floors[AGREEMENT]:.4f}, {len(state.alarms)} alarms so far); nearest its alarm: {nearest} at "
        f"{share:.1%} of its threshold (false-alarm ARL >= {state.arl:g})"
    )
    return GateResult(name="watch", verdict=Verdict.PASS, n=agreement.n, estimate=share, threshold=1.0, message=message)


def decide_watching(
    spec: RolloutSpec, status: RolloutStatus, evidence: Evidence, now: float, fast: tuple[GateResult, ...]
) -> Decision:
    """One tick while watching (precedence in the module docstring)."""
    if fast and fast[0].verdict is Verdict.FAIL:
        return rollback_decision(status, fast, (fast[0].message,))
    if status.intents.abort:
        return rollback_decision(status, fast, (f"operator rollback: {status.intents.abort_reason or 'no reason'}",))
    gates = (watch_gate(evidence.watch, status.watch_alarms), *fast)
    alarms = new_alarms(status, evidence)
    acted = status.watch_alarms + len(alarms)
    reasons = tuple(alarm.message for alarm in alarms)
    if alarms and (spec.watch is None or spec.watch.action == "rollback"):
        return rollback_decision(status, gates, reasons).model_copy(update={"watch_alarms": acted})
    next_check_at = now + spec.tick_interval_s
    if alarms:
        return Decision(
            action=Action.ALERT,
            phase=Phase.WATCHING,
            stage_index=status.stage_index,
            weight=status.weight,
            gates=gates,
            reasons=(*reasons, "the watch's action is alert: the student keeps serving"),
            next_check_at=next_check_at,
            watch_alarms=acted,
        )
    return stay(status, (gates[0].message,), next_check_at, gates)
