"""rollout.smoke and the controller's wait for it: served models that answer like their
registered selves start stage 0; ones that do not never reach it, and the event says by how much."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import SpecError
from rollout.events import EventKind
from rollout.policy import Action
from rollout.smoke import Recorded, judge_smoke, skipped
from rollout.spec import RolloutSpec
from rollout.status import Phase
from rollout.store import MemoryStateStore
from rollout.webhooks import RecordingWebhookSender
from serving.smoke_inputs import read_labelled_inputs

TEXTS = tuple(f"review {i}" for i in range(100))
LABELS = tuple(i % 2 for i in range(100))
TEACHER = Recorded(model_id="t1", texts=TEXTS, labels=LABELS, predictions=LABELS[:90] + (0,) * 10)
STUDENT = Recorded(model_id="s1", texts=TEXTS, labels=LABELS, predictions=LABELS[:85] + (0,) * 15)


def test_served_answers_as_recorded_pass_with_the_numbers() -> None:
    result = judge_smoke(0.02, TEACHER, STUDENT, TEACHER.predictions, STUDENT.predictions)
    assert result.passed and result.inputs == 100
    assert (
        result.figures["matched_student"] == 1.0
        and result.figures["agreement"] == result.figures["registered_agreement"]
    )
    assert result.message.startswith("smoke test passed: student answered 100.0% and teacher 100.0% of 100")


def test_a_served_student_unlike_its_registered_self_fails_by_how_much() -> None:
    served = tuple(1 - p for p in STUDENT.predictions[:10]) + STUDENT.predictions[10:]  # 10 % answered otherwise
    result = judge_smoke(0.02, TEACHER, STUDENT, TEACHER.predictions, served)
    assert not result.passed
    assert "the served student (s1) answered 10.0% of 100 inputs unlike its registered self (tolerance 2.0%)" in (
        result.message
    )
    assert result.figures["matched_student"] == pytest.approx(0.9)
    assert "the served student's accuracy 0.8200 vs 0.9200 registered" in result.message  # those 10 were right
    assert judge_smoke(0.11, TEACHER, STUDENT, TEACHER.predictions, served).passed  # within a looser tolerance


def test_records_of_different_inputs_cannot_be_compared() -> None:
    other = STUDENT.model_copy(update={"texts": tuple(reversed(TEXTS))})
    assert "recorded different inputs" in judge_smoke(0.02, TEACHER, other, (), ()).message


def rig() -> tuple[RolloutController, RecordingWebhookSender]:
    hooks = RecordingWebhookSender()
    controller = RolloutController(RolloutSpec(), MemoryStateStore(), FakeClock(1_000.0), hooks, smoke_test=True)
    return controller, hooks


def test_a_start_waits_for_the_smoke_test_and_a_pass_starts_stage_0_at_once() -> None:
    controller, hooks = rig()
    status = controller.start(actor="alice", reason="ship v2")
    assert status.phase is Phase.PENDING and controller.smoke_due()
    decision = controller.tick()
    assert decision.action is Action.HOLD and "waiting for the served models" in decision.reasons[0]
    assert controller.next_tick_at() > 1_000.0  # waiting is not urgent: the tick loop does not spin
    controller.record_smoke(judge_smoke(0.02, TEACHER, STUDENT, TEACHER.predictions, STUDENT.predictions))
    assert controller.status().phase is Phase.PROGRESSING and not controller.smoke_due()  # type: ignore[union-attr]
    smoke = next(e for e in hooks.sent if e.action == "smoke_test")
    assert smoke.kind is EventKind.CONTROLLER and smoke.payload["passed"] and smoke.payload["inputs"] == 100
    started = next(e for e in hooks.sent if e.action == "start" and e.kind is EventKind.DECISION)
    assert "smoke test passed" in started.reason


def test_a_failed_smoke_test_never_reaches_stage_0() -> None:
    controller, hooks = rig()
    controller.start(actor="alice", reason="ship v2")
    served = (1,) * 100
    controller.record_smoke(judge_smoke(0.02, TEACHER, STUDENT, TEACHER.predictions, served))
    status = controller.status()
    assert status is not None and (status.phase, status.weight) == (Phase.ROLLED_BACK, 0.0)
    assert status.rollback_reason is not None and status.rollback_reason.startswith("smoke test failed")
    assert controller.snapshot().counters.rollbacks == {"smoke": 1}
    assert not [e for e in hooks.sent if e.action == "start" and e.kind is EventKind.DECISION]
    controller.record_smoke(skipped("s1"))  # a late result for a rollout that moved on changes nothing
    assert controller.status() == status


def test_without_served_models_no_smoke_test_is_waited_for() -> None:
    controller = RolloutController(RolloutSpec(), MemoryStateStore(), FakeClock(1_000.0), RecordingWebhookSender())
    assert controller.start(actor="alice", reason="ship v2").phase is Phase.PROGRESSING


def test_a_named_smoke_file_maps_its_labels_to_the_models_order(tmp_path: Path) -> None:
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"text": "a joy", "label": "fresh"}\n{"text": "a bore", "label": "rotten"}\n')
    assert read_labelled_inputs(golden, ("rotten", "fresh")) == (["a joy", "a bore"], [1, 0])
    by_index = tmp_path / "golden.csv"
    by_index.write_text("text,label\na joy,1\na bore,0\n")
    assert read_labelled_inputs(by_index, ("rotten", "fresh")) == (["a joy", "a bore"], [1, 0])


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"text": "a", "label": "fresh"}\n{"text": "b", "label": "meh"}\n', "labels ['meh'] are not the models'"),
        ('{"text": "a", "stars": 5}\n', "no column 'label'"),
        ("{not json\n", "line is not JSON"),
    ],
)
def test_a_bad_smoke_file_is_one_line_naming_it(tmp_path: Path, content: str, error: str) -> None:
    golden = tmp_path / "golden.jsonl"
    golden.write_text(content)
    with pytest.raises(SpecError, match=r"smoke\.inputs") as raised:
        read_labelled_inputs(golden, ("rotten", "fresh"))
    assert error in str(raised.value) and "\n" not in str(raised.value)
