"""What a tick decides: the action, the target phase, stage and weight, and the gates behind it.

Shared by the stage policy (rollout/policy.py) and the watch after promotion
(rollout/watching.py); the controller applies a Decision with `policy.apply`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from rollout.gates import GateResult
from rollout.status import Phase, RolloutStatus

_RECORD = ConfigDict(frozen=True, extra="forbid")


class Action(StrEnum):
    """What a tick does."""

    START = "start"  # pending -> progressing at stage 0 (shadow)
    HOLD = "hold"  # nothing changes: conditions unmet, evidence inconclusive, or terminal
    ADVANCE = "advance"  # to the next stage: all conditions met, or an operator promote
    COMPLETE = "complete"  # the last stage is done (or promote to full): weight 1, watching or completed
    ROLLBACK = "rollback"  # a gate failed, the trip wire fired, or an operator aborted: weight 0
    PAUSE = "pause"  # an operator pause or manual weight took effect
    RESUME = "resume"  # the pause was withdrawn: back to the stage's weight
    ALERT = "alert"  # the watch detected a change and its action is to alert: nothing moves


class Decision(BaseModel):
    """A tick's verdict: the target phase/stage/weight, the gates behind it, when to look next."""

    model_config = _RECORD

    action: Action
    phase: Phase
    stage_index: int
    weight: float
    gates: tuple[GateResult, ...] = ()
    reasons: tuple[str, ...] = ()
    next_check_at: float | None = None
    promote_consumed: bool = False
    pause_intent: bool = False  # the deadline paused it: hold until an operator resumes
    deadline_passed: bool = False  # this decision is the stage deadline's action
    awaiting_confirmation: int | None = None  # the stage this hold waits to be confirmed into
    watch_alarms: int | None = None  # the watch's alarms acted on so far, when this decision acts on one


class Routing(BaseModel):
    """What routers need: the student's share of live traffic and the comparison rate."""

    model_config = _RECORD

    weight: float
    shadow_fraction: float


def rollback_decision(status: RolloutStatus, gates: tuple[GateResult, ...], reasons: tuple[str, ...]) -> Decision:
    return Decision(
        action=Action.ROLLBACK,
        phase=Phase.ROLLED_BACK,
        stage_index=status.stage_index,
        weight=0.0,
        gates=gates,
        reasons=reasons,
    )


def stay(
    status: RolloutStatus,
    reasons: tuple[str, ...],
    next_check_at: float | None,
    gates: tuple[GateResult, ...] = (),
) -> Decision:
    return Decision(
        action=Action.HOLD,
        phase=status.phase,
        stage_index=status.stage_index,
        weight=status.weight,
        gates=gates,
        reasons=reasons,
        next_check_at=next_check_at,
    )
