"""The operator's intents on a rollout: start, pause, resume, promote, roll back, confirm, pin a
weight. Each is recorded with who and why (an operator event), saved, and acted on by the tick
(`policy.decide`), at once when urgent. A fenced controller refuses them all.

`OperatorIntents` is the part of `RolloutController` that takes them: it works on the
controller's state, under the controller's lock, through the names declared below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollout.clock import Clock
from rollout.decision import Decision
from rollout.errors import IntentError
from rollout.events import EventKind
from rollout.evidence import Evidence
from rollout.gates import GateResult
from rollout.journal import Draft, Journal
from rollout.policy import urgent
from rollout.spec import RolloutSpec, percent
from rollout.status import (
    PromoteTarget,
    RolloutStatus,
    request_confirm,
    request_manual_weight,
    request_pause,
    request_promote,
    request_resume,
    request_rollback,
)


class Operator(BaseModel):
    """Who asked and why, validated at the boundary (the actor is a name, never a credential)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(max_length=2000)


class OperatorIntents:
    """The admin intents of `RolloutController` (see the module docstring)."""

    # The controller's state these methods read and write.
    _lock: threading.RLock
    _spec: RolloutSpec
    _clock: Clock
    _journal: Journal
    _status: RolloutStatus | None
    _evidence: Evidence
    _dirty: bool
    _last_gates: tuple[GateResult, ...]
    _save: Callable[[float], None]
    _tick: Callable[[float], Decision]

    def start(self, *, actor: str, reason: str) -> RolloutStatus:
        """Begin a rollout at stage 0 with fresh evidence: the first ever, or a new one after
        the last rolled back, completed or is watched. IntentError while one is live."""
        operator = Operator(actor=actor, reason=reason)
        with self._lock:
            self._require_writer()
            now, old, before = self._clock.now(), self._status, (self._status, self._evidence)
            if old is not None and not old.settled:
                raise IntentError(
                    f"cannot start: a rollout is already {old.phase.value} at stage {old.stage_index} "
                    f"({percent(old.weight)})"
                )
            epoch = 0 if old is None else old.epoch + 1  # keeps the routing version rising
            self._status, self._evidence = RolloutStatus(epoch=epoch), Evidence(epoch=epoch)
            self._last_gates = ()
            previous = None if old is None else old.phase.value
            return self._accept(operator, "start", before, {"previous_phase": previous}, now)

    def pause(self, *, actor: str, reason: str) -> RolloutStatus:
        """Hold the current weight (rollbacks still fire) until `resume`."""
        return self._intent("pause", Operator(actor=actor, reason=reason), request_pause, {})

    def resume(self, *, actor: str, reason: str) -> RolloutStatus:
        """Withdraw a pause and any manual weight; progression continues from the stage."""
        return self._intent("resume", Operator(actor=actor, reason=reason), request_resume, {})

    def promote(self, to_full: bool = False, *, actor: str, reason: str) -> RolloutStatus:
        """Skip the current stage's conditions: one stage, or (`to_full`) to 100 % and completed."""
        target = PromoteTarget.FULL if to_full else PromoteTarget.NEXT
        change = lambda status: request_promote(status, target)  # noqa: E731
        return self._intent("promote", Operator(actor=actor, reason=reason), change, {"to": target.value})

    def rollback(self, reason: str, *, actor: str) -> RolloutStatus:
        """Send the student back to 0 % now (the tick runs inside this call)."""
        operator = Operator(actor=actor, reason=reason)
        _require_reason("rollback", operator)
        return self._intent("rollback", operator, lambda status: request_rollback(status, operator.reason), {})

    def confirm(self, *, actor: str, reason: str) -> RolloutStatus:
        """Let the rollout enter the next stage when its conditions are met (for a stage with
        `confirm`); rollbacks fire meanwhile as always. IntentError when the next stage asks for
        no confirmation."""
        operator = Operator(actor=actor, reason=reason)
        _require_reason("confirm", operator)
        with self._lock:
            status = self._status
            following = status.stage_index + 1 if status is not None else 0
            if status is not None and not status.settled and not self._confirmable(following):
                raise IntentError(f"cannot confirm: stage {following} does not ask for a confirmation")
        return self._intent("confirm", operator, request_confirm, {"stage": following})

    def _confirmable(self, index: int) -> bool:
        return index < len(self._spec.stages) and self._spec.stages[index].confirm

    def set_weight(self, weight: float | None, *, actor: str, reason: str) -> RolloutStatus:
        """Pin the student's weight, pausing progression; None withdraws the override."""
        operator = Operator(actor=actor, reason=reason)
        _require_reason("set a manual weight", operator)
        change = lambda status: request_manual_weight(status, weight)  # noqa: E731
        return self._intent("set_weight", operator, change, {"weight": weight})

    def _intent(
        self,
        action: str,
        operator: Operator,
        change: Callable[[RolloutStatus], RolloutStatus],
        payload: dict[str, Any],
    ) -> RolloutStatus:
        with self._lock:
            self._require_writer()
            now = self._clock.now()
            if self._status is None:
                raise IntentError(f"cannot {action}: no rollout started (start one first)")
            before = (self._status, self._evidence)
            self._status = change(self._status)
            return self._accept(operator, action, before, payload, now)

    def _require_writer(self) -> None:
        """A fenced controller accepts no intent: it could never record it."""
        if self._journal.fenced is not None:
            raise self._journal.fenced

    def _accept(
        self,
        operator: Operator,
        action: str,
        before: tuple[RolloutStatus | None, Evidence],
        payload: dict[str, Any],
        now: float,
    ) -> RolloutStatus:
        """Record the operator event, persist, and tick at once if the intent is urgent. A save
        that finds this controller fenced undoes the intent and refuses it."""
        status = self._status
        assert status is not None
        self._dirty = True
        details = {**payload, "status": status.position(), "intents": status.intents.model_dump(mode="json")}
        self._journal.commit(Draft(EventKind.OPERATOR, action, operator.reason, details, operator.actor), now)
        self._save(now)
        if self._journal.fenced is not None:
            self._status, self._evidence = before
            raise self._journal.fenced
        if urgent(self._spec, status, self._evidence, now):
            self._tick(now)
        return self._status or status


def _require_reason(action: str, operator: Operator) -> None:
    if not operator.reason:
        raise IntentError(f"cannot {action} without a reason: say why (it goes into the event log)")
