"""The rollout policy: `decide(spec, status, evidence, now) -> Decision`, then `apply`.

Pure, like Ray Serve's autoscaling policy (context in, decision out): no clock, no I/O, no
randomness, so a tick is a function of its inputs and a scenario test is a list of them.
The controller around it ingests observations, calls `tick`, persists the status, publishes
`routing(spec, status)`, and sleeps until `next_check_at` (or until `urgent` says not to).

Precedence on every tick, first match wins:

1. terminal phases (rolled back, completed) stay put; a watched one follows rollout/watching.py;
2. the fast-rollback trip wire (the student fails hard) rolls back;
3. an operator rollback (`abort` intent) rolls back;
4. a pending rollout starts at stage 0;
5. any FAILing gate rolls back, even while paused: pausing stops advancing, not protection
   (a gate's result counts only where it is `binding`: see `spec.AccuracyGate.mode`);
6. an operator promote skips the stage's conditions (one stage, or to 100 % and completed);
7. a pause or manual weight holds progression (at the manual weight if one is set);
8. a paused rollout whose pause was withdrawn resumes at its stage's weight;
9. otherwise the stage advances (or, at the last stage, completes) once every gate passes,
   the stage saw `min_requests` student observations and `min_dwell_s` elapsed, and the next
   stage, if it asks for `confirm`, was confirmed; else hold, until the stage's deadline
   (`max_duration_s`, or the spec's `max_stage_duration_s`) takes `deadline_action`.

`check_spec_change(status, old, new)` is the rule for a spec edited under a live rollout: the
current stage must stay, at the same weight.
"""

from __future__ import annotations

from rollout.decision import Action, Decision, Routing, rollback_decision, stay
from rollout.errors import SpecError
from rollout.evidence import Evidence, rollover
from rollout.gates import GateResult, Verdict, evaluate_gates, fast_rollback_check
from rollout.spec import RolloutSpec, percent
from rollout.status import SETTLED_PHASES, Intents, Phase, PromoteTarget, RolloutStatus
from rollout.watching import decide_watching, new_alarms

__all__ = ["Action", "Decision", "Routing", "apply", "check_spec_change", "decide", "routing", "tick", "urgent"]


def _stage_text(spec: RolloutSpec, index: int) -> str:
    return f"stage {index} ({percent(spec.stages[index].weight)})"


def decide(spec: RolloutSpec, status: RolloutStatus, evidence: Evidence, now: float) -> Decision:
    """One tick of the policy (precedence in the module docstring).

    Raises SpecError only when the status points past the spec's stages (a spec swapped
    under a live rollout); evidence, however odd, never makes it raise.
    """
    if status.terminal:
        return stay(status, (f"rollout is {status.phase.value}; nothing to do",), None)
    if status.phase is Phase.WATCHING:
        return decide_watching(spec, status, evidence, now, _fast_check(spec, evidence, now))
    if status.stage_index >= len(spec.stages):
        count = len(spec.stages)
        raise SpecError(f"status.stage_index {status.stage_index} is beyond the spec's {count} stages")
    evidence = rollover(evidence, status.epoch)  # never judge a stage by another stage's load
    fast = _fast_check(spec, evidence, now)
    if fast and fast[0].verdict is Verdict.FAIL:
        return rollback_decision(status, fast, (fast[0].message,))
    if status.intents.abort:
        reason = f"operator rollback: {status.intents.abort_reason or 'no reason given'}"
        return rollback_decision(status, fast, (reason,))
    if status.phase is Phase.PENDING:
        return _begin(spec, status, now)
    gates = evaluate_gates(spec, evidence)
    failed = tuple(gate.message for gate in gates if gate.fails)
    if failed:
        return rollback_decision(status, gates + fast, failed)
    if status.intents.promote is not None:
        return _promote(spec, status, gates + fast, now)
    if status.intents.pause or status.intents.manual_weight is not None:
        return _pause(spec, status, gates + fast, now)
    if status.phase is Phase.PAUSED:
        index, recorded = status.stage_index, gates + fast
        return _move(spec, now, action=Action.RESUME, index=index, reason="resumed", gates=recorded)
    return _progress(spec, status, evidence, gates, now, fast=fast)


def _begin(spec: RolloutSpec, status: RolloutStatus, now: float) -> Decision:
    """A pending rollout starts at stage 0 once the served models passed the smoke test (when
    the spec asks for one); a failed smoke test never reaches stage 0."""
    smoke = status.smoke
    if spec.smoke is not None and smoke is None:
        waiting = "smoke test: waiting for the served models to answer their recorded inputs"
        return stay(status, (waiting,), now + spec.tick_interval_s)
    if smoke is not None and not smoke.passed:
        tolerance = spec.smoke.tolerance if spec.smoke is not None else 0.0
        gate = GateResult(
            name="smoke", verdict=Verdict.FAIL, n=smoke.inputs, threshold=tolerance, message=smoke.message
        )
        return rollback_decision(status, (gate,), (smoke.message,))
    reason = "rollout started" if smoke is None else f"rollout started ({smoke.message})"
    return _move(spec, now, action=Action.START, index=0, reason=reason)


def _fast_check(spec: RolloutSpec, evidence: Evidence, now: float) -> tuple[GateResult, ...]:
    if spec.fast_rollback is None:
        return ()
    return (fast_rollback_check(spec.fast_rollback, evidence, now),)


def _move(
    spec: RolloutSpec,
    now: float,
    *,
    action: Action,
    index: int,
    reason: str,
    gates: tuple[GateResult, ...] = (),
) -> Decision:
    """A decision that lands on stage `index`, progressing, at that stage's own weight."""
    return Decision(
        action=action,
        phase=Phase.PROGRESSING,
        stage_index=index,
        weight=spec.stages[index].weight,
        gates=gates,
        reasons=(f"{reason} at {_stage_text(spec, index)}",),
        next_check_at=now + spec.tick_interval_s,
    )


def _complete(
    spec: RolloutSpec, gates: tuple[GateResult, ...], reasons: tuple[str, ...], now: float, promoted: bool
) -> Decision:
    """All traffic to the student: watched from now on when the spec has a watch, else completed."""
    watched = spec.watch is not None
    if spec.watch is not None:
        reasons = (*reasons, f"watching: {percent(spec.watch.shadow_fraction)} still compared with the teacher")
    return Decision(
        action=Action.COMPLETE,
        phase=Phase.WATCHING if watched else Phase.COMPLETED,
        stage_index=len(spec.stages) - 1,
        weight=1.0,
        gates=gates,
        reasons=reasons,
        next_check_at=now + spec.tick_interval_s if watched else None,
        promote_consumed=promoted,
    )


def _promote(spec: RolloutSpec, status: RolloutStatus, gates: tuple[GateResult, ...], now: float) -> Decision:
    last = len(spec.stages) - 1
    if status.intents.promote is PromoteTarget.FULL or status.stage_index == last:
        reason = f"operator promote from {_stage_text(spec, status.stage_index)} to 100 %: completed"
        return _complete(spec, gates, (reason,), now, promoted=True)
    target = status.stage_index + 1
    target_text = _stage_text(spec, target)
    held = status.intents.pause or status.intents.manual_weight is not None
    manual = status.intents.manual_weight
    return Decision(
        action=Action.ADVANCE,
        phase=Phase.PAUSED if held else Phase.PROGRESSING,
        stage_index=target,
        weight=manual if manual is not None else spec.stages[target].weight,
        gates=gates,
        reasons=(f"operator promote: {_stage_text(spec, status.stage_index)} -> {target_text}",),
        next_check_at=now + spec.tick_interval_s,
        promote_consumed=True,
    )


def _pause(spec: RolloutSpec, status: RolloutStatus, gates: tuple[GateResult, ...], now: float) -> Decision:
    manual = status.intents.manual_weight
    stage = _stage_text(spec, status.stage_index)
    weight = manual if manual is not None else spec.stages[status.stage_index].weight
    if manual is not None:
        reason = f"manual weight {percent(manual)} at {stage}: progression paused"
    else:
        reason = f"paused by operator at {stage}"
    unchanged = status.phase is Phase.PAUSED and weight == status.weight
    return Decision(
        action=Action.HOLD if unchanged else Action.PAUSE,
        phase=Phase.PAUSED,
        stage_index=status.stage_index,
        weight=weight,
        gates=gates,
        reasons=(reason,),
        next_check_at=now + spec.tick_interval_s,
    )


def _unmet(spec: RolloutSpec, status: RolloutStatus, evidence: Evidence, now: float) -> tuple[str, ...]:
    """The stage's own conditions that still hold it back, with their numbers."""
    stage = spec.stages[status.stage_index]
    n = evidence.student.requests
    dwell = now - (status.stage_started_at if status.stage_started_at is not None else now)
    unmet = []
    if n < stage.min_requests:
        unmet.append(f"min_requests: student n={n} < {stage.min_requests}")
    if dwell < stage.min_dwell_s:
        unmet.append(f"min_dwell: {dwell:.1f} s < {stage.min_dwell_s:g} s")
    return tuple(unmet)


def _progress(
    spec: RolloutSpec,
    status: RolloutStatus,
    evidence: Evidence,
    gates: tuple[GateResult, ...],
    now: float,
    *,
    fast: tuple[GateResult, ...],
) -> Decision:
    index, stage = status.stage_index, _stage_text(spec, status.stage_index)
    waiting = _unmet(spec, status, evidence, now)
    waiting += tuple(gate.message for gate in gates if gate.blocks)
    if waiting:
        if (deadline := _deadline(spec, status, gates + fast, waiting, now)) is not None:
            return deadline
        next_check_at = now + spec.tick_interval_s
        if status.stage_started_at is not None:
            dwell_end = status.stage_started_at + spec.stages[index].min_dwell_s
            next_check_at = min(next_check_at, dwell_end) if dwell_end > now else next_check_at
        return stay(status, (f"holding at {stage}", *waiting), next_check_at, gates + fast)
    passed = tuple(gate.message for gate in gates)
    summary = f"{stage} satisfied (student n={evidence.student.requests})"
    if index == len(spec.stages) - 1:
        return _complete(spec, gates + fast, (f"{summary}: rollout completed", *passed), now, promoted=False)
    if spec.stages[index + 1].confirm and status.intents.confirmed_stage != index + 1:
        waits = (
            f"{summary}: waiting for confirmation to enter {_stage_text(spec, index + 1)} "
            "(POST /admin/rollout/confirm, or `kdcanary rollout confirm`)"
        )
        decision = stay(status, (waits, *passed), now + spec.tick_interval_s, gates + fast)
        return decision.model_copy(update={"awaiting_confirmation": index + 1})
    return Decision(
        action=Action.ADVANCE,
        phase=Phase.PROGRESSING,
        stage_index=index + 1,
        weight=spec.stages[index + 1].weight,
        gates=gates + fast,
        reasons=(f"{summary}: advancing to {_stage_text(spec, index + 1)}", *passed),
        next_check_at=now + spec.tick_interval_s,
    )


def _deadline(
    spec: RolloutSpec, status: RolloutStatus, gates: tuple[GateResult, ...], waiting: tuple[str, ...], now: float
) -> Decision | None:
    """The stage's deadline, once it passed with the stage still holding: `deadline_action`
    (pause until an operator resumes, or roll back), the stage's numbers in the reasons. The
    clock runs from the stage's start or the last resume, whichever is later."""
    limit = spec.deadline_s(status.stage_index)
    marks = [t for t in (status.stage_started_at, status.last_transition_at) if t is not None]
    if limit is None or not marks or now - max(marks) < limit:
        return None
    held = now - max(marks)
    stage = _stage_text(spec, status.stage_index)
    gate = GateResult(
        name="deadline",
        verdict=Verdict.FAIL,
        n=int(held),
        estimate=held,
        threshold=limit,
        message=f"deadline: {stage} still holding after {held:.0f} s (max {limit:g} s): {spec.deadline_action}",
    )
    reasons, shown = (gate.message, *waiting), (*gates, gate)
    if spec.deadline_action == "rollback":
        return rollback_decision(status, shown, reasons).model_copy(update={"deadline_passed": True})
    return Decision(
        action=Action.PAUSE,
        phase=Phase.PAUSED,
        stage_index=status.stage_index,
        weight=status.weight,
        gates=shown,
        reasons=reasons,
        next_check_at=now + spec.tick_interval_s,
        pause_intent=True,
        deadline_passed=True,
    )


def idle(next_check_at: float) -> Decision:
    """The HOLD of a controller with no rollout started yet."""
    return Decision(
        action=Action.HOLD,
        phase=RolloutStatus().phase,
        stage_index=0,
        weight=0.0,
        reasons=("no rollout started: waiting for an operator start",),
        next_check_at=next_check_at,
    )


def deferred(decision: Decision, status: RolloutStatus, failures: int, next_check_at: float) -> Decision:
    """A HOLD in place of a decision that needs a durable record while the store is down
    (`failures` saves in a row have failed)."""
    reason = (
        f"state store unavailable ({failures} failed saves in a row): holding instead of "
        f"{decision.action.value} until a save succeeds"
    )
    return stay(status, (reason, *decision.reasons), next_check_at, decision.gates)


def apply(status: RolloutStatus, decision: Decision, now: float) -> RolloutStatus:
    """The status after `decision` at `now`: bumps the epoch when the weight or stage moved,
    restarts the dwell clock with it, consumes acted-on intents, records the rollback reason."""
    moved = decision.weight != status.weight or decision.stage_index != status.stage_index
    changed = moved or decision.phase is not status.phase
    intents = status.intents
    if decision.promote_consumed:
        intents = intents.model_copy(update={"promote": None})
    if decision.pause_intent:
        intents = intents.model_copy(update={"pause": True})
    if decision.phase in SETTLED_PHASES:
        intents = Intents()
    started = status.stage_started_at
    return status.model_copy(
        update={
            "phase": decision.phase,
            "stage_index": decision.stage_index,
            "weight": decision.weight,
            "epoch": status.epoch + 1 if moved else status.epoch,
            "stage_started_at": now if moved or started is None else started,
            "last_transition_at": now if changed else status.last_transition_at,
            "ticks": status.ticks + 1,
            "rollback_reason": "; ".join(decision.reasons)
            if decision.action is Action.ROLLBACK
            else status.rollback_reason,
            "message": f"{decision.action.value}: " + "; ".join(decision.reasons),
            "intents": intents,
            "watch_alarms": status.watch_alarms if decision.watch_alarms is None else decision.watch_alarms,
            "deadline_passed_at": now if decision.deadline_passed else (None if changed else status.deadline_passed_at),
        }
    )


def tick(spec: RolloutSpec, status: RolloutStatus, evidence: Evidence, now: float) -> tuple[Decision, RolloutStatus]:
    """`decide` then `apply`; afterwards call `evidence.rollover(evidence, new_status.epoch)`."""
    decision = decide(spec, status, evidence, now)
    return decision, apply(status, decision, now)


def urgent(spec: RolloutSpec, status: RolloutStatus, evidence: Evidence, now: float) -> bool:
    """Should the controller tick now instead of at `next_check_at`? Call it on every batch.

    True when the trip wire fires or an operator intent waits; this is what bounds the time
    from a burst of student failures reaching the controller to weight 0 by one tick.
    """
    if status.terminal:
        return False
    pending = status.intents
    if pending.abort or pending.promote is not None:
        return True
    if status.phase is Phase.PENDING:  # unless it waits for the smoke test's answers
        return spec.smoke is None or status.smoke is not None
    if new_alarms(status, evidence):
        return True
    if spec.fast_rollback is None:
        return False
    return fast_rollback_check(spec.fast_rollback, evidence, now).verdict is Verdict.FAIL


def routing(spec: RolloutSpec, status: RolloutStatus) -> Routing:
    """What to publish to routers; shadow comparisons run only while the rollout is live or watched."""
    if status.phase is Phase.WATCHING:
        return Routing(weight=status.weight, shadow_fraction=spec.watch.shadow_fraction if spec.watch else 0.0)
    live = status.phase in (Phase.PROGRESSING, Phase.PAUSED)
    shadow = spec.stages[status.stage_index].shadow_fraction if live else 0.0
    return Routing(weight=status.weight, shadow_fraction=shadow)


def check_spec_change(status: RolloutStatus | None, old: RolloutSpec, new: RolloutSpec) -> None:
    """A spec changed under a live rollout must keep its current stage, at the same weight: the
    traffic share moves only by a decision or an operator's intent, never by an edit."""
    if status is None or status.settled:
        return
    index = status.stage_index
    if index >= len(new.stages):
        raise SpecError(f"stages: the live rollout is at stage {index}, the new spec has {len(new.stages)} stages")
    if new.stages[index].weight != old.stages[index].weight:
        raise SpecError(
            f"stages.{index}.weight: the live rollout is at stage {index} ({percent(old.stages[index].weight)}), "
            f"the new spec puts it at {percent(new.stages[index].weight)}; change weights between rollouts"
        )
