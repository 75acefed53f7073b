"""rollout.status: the persisted record and the admin intents written into it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.errors import IntentError
from rollout.status import (
    Intents,
    Phase,
    PromoteTarget,
    RolloutStatus,
    request_manual_weight,
    request_pause,
    request_promote,
    request_resume,
    request_rollback,
)


def test_a_new_status_is_pending_at_weight_zero() -> None:
    status = RolloutStatus()
    assert (status.phase, status.stage_index, status.weight, status.epoch) == (
        Phase.PENDING,
        0,
        0.0,
        0,
    )
    assert status.intents == Intents() and not status.terminal


def test_status_round_trips_through_json_with_every_field_set() -> None:
    status = RolloutStatus(
        phase=Phase.PAUSED,
        stage_index=3,
        weight=0.25,
        epoch=7,
        stage_started_at=1234.5,
        last_transition_at=1300.0,
        ticks=99,
        message="pause: paused by operator at stage 3 (25 %)",
        intents=Intents(pause=True, promote=PromoteTarget.FULL, manual_weight=0.3),
    )
    text = status.model_dump_json()
    assert '"phase":"paused"' in text and '"promote":"full"' in text
    assert RolloutStatus.model_validate_json(text) == status


def test_intents_are_written_not_acted_on() -> None:
    status = RolloutStatus(phase=Phase.PROGRESSING, stage_index=1, weight=0.05)
    paused = request_pause(status)
    assert paused.intents.pause and paused.phase is Phase.PROGRESSING and paused.weight == 0.05
    pinned = request_manual_weight(paused, 0.3)
    assert pinned.intents.manual_weight == 0.3
    resumed = request_resume(pinned)
    assert not resumed.intents.pause and resumed.intents.manual_weight is None
    assert request_promote(status).intents.promote is PromoteTarget.NEXT
    assert request_promote(status, PromoteTarget.FULL).intents.promote is PromoteTarget.FULL
    aborted = request_rollback(status, "p99 alarms in region eu")
    assert aborted.intents.abort and aborted.intents.abort_reason == "p99 alarms in region eu"
    assert status.intents == Intents()  # the original is untouched


@pytest.mark.parametrize("phase", [Phase.ROLLED_BACK, Phase.COMPLETED])
def test_intents_on_a_finished_rollout_are_conflicts(phase: Phase) -> None:
    status = RolloutStatus(phase=phase)
    with pytest.raises(IntentError, match=f"cannot promote: rollout is already {phase.value}"):
        request_promote(status)
    with pytest.raises(IntentError, match="cannot roll back"):
        request_rollback(status, "why")


def test_manual_weight_outside_0_100_names_the_field() -> None:
    with pytest.raises(ValidationError, match="manual_weight"):
        request_manual_weight(RolloutStatus(), 150.0)


def test_unknown_fields_in_a_stored_status_are_rejected() -> None:
    with pytest.raises(ValidationError, match="weight"):
        RolloutStatus.model_validate({"phase": "progressing", "weight": 5})
