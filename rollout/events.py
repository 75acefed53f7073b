"""The event log's record: every decision that changed the rollout, every operator action.

Events are appended, never edited. The controller numbers them itself (last stored id + 1)
so that the id a webhook carries is the id the log keeps, and a save repeated after an
ambiguous failure cannot duplicate an event: stores ignore an id they already hold. A HOLD
is not an event (the status record and metrics show holds); a change always is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rollout.evidence import Evidence, Segment
from rollout.watch import StreamSummary, summary


class EventKind(StrEnum):
    """What produced an event."""

    DECISION = "decision"  # a tick changed the rollout: start, advance, complete, rollback, pause, resume
    OPERATOR = "operator"  # an admin intent was accepted: `actor` and `reason` say who and why
    STORE = "store"  # the state store failed to save ("write_failed") or came back ("recovered")
    CONTROLLER = "controller"  # a controller resumed a stored rollout after a restart


class Event(BaseModel):
    """One entry of the append-only log; `payload` holds the numbers (gates, evidence counts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=1)
    at: float
    kind: EventKind
    action: str = Field(min_length=1, max_length=64)
    actor: str | None = None
    reason: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)


class EvidenceSummary(BaseModel):
    """The counts behind a decision, small enough for every event and status response."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epoch: int
    student_requests: int
    student_errors: int
    teacher_requests: int
    teacher_errors: int
    agreement_compared: int
    agreement_agreed: int
    consecutive_student_errors: int
    # labelled answers (feedback), pooled across stages; absent from events logged before labels
    student_labelled: int = 0
    student_correct: int = 0
    teacher_labelled: int = 0
    teacher_correct: int = 0
    both_right: int = 0
    both_wrong: int = 0
    only_student: int = 0
    only_teacher: int = 0
    segments: dict[str, Segment] = Field(default_factory=dict)  # per declared segment (and "other")
    watch: dict[str, StreamSummary] = Field(default_factory=dict)  # the watch's streams, once promoted

    @property
    def labelled(self) -> int:
        return self.student_labelled + self.teacher_labelled


def summarize(evidence: Evidence) -> EvidenceSummary:
    """Counts only: the histograms stay in the store's evidence snapshot."""
    return EvidenceSummary(
        epoch=evidence.epoch,
        student_requests=evidence.student.requests,
        student_errors=evidence.student.errors,
        teacher_requests=evidence.teacher.requests,
        teacher_errors=evidence.teacher.errors,
        agreement_compared=evidence.agreement.compared,
        agreement_agreed=evidence.agreement.agreed,
        consecutive_student_errors=evidence.recent.consecutive_errors,
        **evidence.accuracy.model_dump(),
        segments=evidence.segments,
        watch=summary(evidence.watch) if evidence.watch is not None else {},
    )
