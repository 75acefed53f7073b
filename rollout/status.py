"""The one persisted record of a rollout, and the admin intents written into it.

The controller stores `RolloutStatus` as JSON after each tick and reloads it on restart
(restart = reload and continue). Admin endpoints never act: they write an intent with the
`request_*` helpers below and the next tick acts on it (`policy.decide`), so every change of
weight goes through one deterministic function. Level intents (`pause`, `manual_weight`)
hold until withdrawn; edge intents (`promote`, `abort`) are consumed by the tick that acts.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollout.errors import IntentError
from rollout.smoke import SmokeResult

_RECORD = ConfigDict(frozen=True, extra="forbid")


class Phase(StrEnum):
    """Where the rollout stands."""

    PENDING = "pending"  # accepted, no tick yet: weight 0, the student sees no traffic at all
    PROGRESSING = "progressing"  # gates evaluated every tick; a satisfied stage advances
    PAUSED = "paused"  # operator pause or manual weight: no advancing, rollbacks still fire
    ROLLED_BACK = "rolled_back"  # terminal: weight 0, `rollback_reason` says why
    WATCHING = "watching"  # weight 1, promoted: a share still compared, a change rolls back or alerts
    COMPLETED = "completed"  # terminal: weight 1, the student serves all traffic (no watch in the spec)


TERMINAL_PHASES = frozenset({Phase.ROLLED_BACK, Phase.COMPLETED})
SETTLED_PHASES = TERMINAL_PHASES | {Phase.WATCHING}
"""Phases after the stages: a new rollout may start from any of them."""


class PromoteTarget(StrEnum):
    """How far an operator promote goes."""

    NEXT = "next"  # to the next stage, skipping its gates, dwell and request count
    FULL = "full"  # straight to all traffic and completed (the admin API's `"to": "full"`)


class Intents(BaseModel):
    """What operators asked for and the tick has not yet acted on (or, for levels, still holds)."""

    model_config = _RECORD

    pause: bool = False
    abort: bool = False
    abort_reason: str | None = None
    promote: PromoteTarget | None = None
    manual_weight: float | None = Field(default=None, ge=0.0, le=1.0)  # a fraction, like every weight
    confirmed_stage: int | None = Field(default=None, ge=1)  # an operator confirmed entering this stage


class RolloutStatus(BaseModel):
    """Phase, position and published weight, plus the counters and intents the tick needs.

    `epoch` increases whenever the published weight or the stage changes; per-stage evidence
    (errors, latency, cost) and the dwell clock `stage_started_at` restart with it.
    """

    model_config = _RECORD

    phase: Phase = Phase.PENDING
    stage_index: int = Field(default=0, ge=0)
    weight: float = Field(default=0.0, ge=0.0, le=1.0)  # the student's share of traffic, 0..1
    epoch: int = Field(default=0, ge=0)
    stage_started_at: float | None = None
    last_transition_at: float | None = None
    ticks: int = Field(default=0, ge=0)
    rollback_reason: str | None = None
    message: str = ""
    intents: Intents = Field(default_factory=Intents)
    watch_alarms: int = Field(default=0, ge=0)  # the watch's alarms the tick has acted on
    deadline_passed_at: float | None = None  # the stage's deadline paused it (cleared when it moves on)
    smoke: SmokeResult | None = None  # the served models' smoke test before stage 0

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def position(self) -> dict[str, Any]:
        """Where it stands, for event payloads."""
        return {"phase": self.phase.value, "stage_index": self.stage_index, "weight": self.weight}

    @property
    def settled(self) -> bool:
        """Past the stages (terminal, or watching at 100 %): a new rollout may start."""
        return self.phase in SETTLED_PHASES


def _with_intents(status: RolloutStatus, action: str, **changes: object) -> RolloutStatus:
    if status.terminal:
        raise IntentError(f"cannot {action}: rollout is already {status.phase.value}")
    if status.phase is Phase.WATCHING and action != "roll back":
        raise IntentError(f"cannot {action}: the student is promoted and watched; roll back or start a new rollout")
    intents = Intents.model_validate({**status.intents.model_dump(), **changes})
    return status.model_copy(update={"intents": intents})


def request_pause(status: RolloutStatus) -> RolloutStatus:
    """Hold the current weight and stop advancing until `request_resume`."""
    return _with_intents(status, "pause", pause=True)


def request_resume(status: RolloutStatus) -> RolloutStatus:
    """Withdraw a pause and any manual weight: progression continues from the current stage."""
    return _with_intents(status, "resume", pause=False, manual_weight=None)


def request_promote(status: RolloutStatus, target: PromoteTarget = PromoteTarget.NEXT) -> RolloutStatus:
    """Skip ahead without waiting for gates: one stage, or (`FULL`) to 100 % and completed."""
    return _with_intents(status, "promote", promote=target)


def request_rollback(status: RolloutStatus, reason: str) -> RolloutStatus:
    """Send the student back to 0 % on the next tick, recording the operator's reason."""
    return _with_intents(status, "roll back", abort=True, abort_reason=reason)


def request_confirm(status: RolloutStatus) -> RolloutStatus:
    """Confirm entering the next stage (the one after the current), for a stage with `confirm`."""
    return _with_intents(status, "confirm", confirmed_stage=status.stage_index + 1)


def request_manual_weight(status: RolloutStatus, weight: float | None) -> RolloutStatus:
    """Pin the student's weight (pausing progression); None withdraws the override."""
    return _with_intents(status, "set a manual weight", manual_weight=weight)
