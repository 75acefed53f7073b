"""Signed request ids and feedback: receipts, the label ledger, the desk and the controller's
accuracy evidence, on a FakeClock and both stores (pure logic, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import ExpiredRequestError, LabelError, RepeatedRequestError, UnknownRequestError
from rollout.evidence import (
    Evidence,
    LabelOutcome,
    Observation,
    PairedAnswers,
    Variant,
    add_labels,
    add_observations,
    rollover,
)
from rollout.feedback import FeedbackDesk, FeedbackItem
from rollout.receipts import Receipt, ReceiptSigner, load_or_create_key, new_nonce, pair_tag
from rollout.spec import RolloutSpec
from rollout.store import MemoryStateStore, SqliteStateStore, StateStore
from rollout.views import ModelPair
from rollout.webhooks import RecordingWebhookSender

KEY = bytes(range(32))
PAIR = ModelPair(teacher_id="teacher1", student_id="student1")
LABELS = ("negative", "positive")
T0 = 1_000_000.0
DAY = 86_400.0


def receipt(served: Variant = Variant.STUDENT, labels: tuple[int, ...] = (1,), at: float = T0, **kw: str) -> Receipt:
    pair = kw.get("pair", pair_tag(PAIR.teacher_id, PAIR.student_id))
    return Receipt(issued_at=at, pair=pair, version=4, served=served, labels=labels, nonce=new_nonce())


def test_a_receipt_opens_back_and_a_forged_or_altered_one_is_unknown() -> None:
    signer, original = ReceiptSigner(KEY), receipt(labels=(1, 0))
    request_id = signer.sign(original)
    assert signer.open(request_id) == original
    with pytest.raises(UnknownRequestError, match="not issued by this deployment"):
        ReceiptSigner(b"k" * 32).open(request_id)
    body, _, tag = request_id.partition(".")
    with pytest.raises(UnknownRequestError):
        signer.open(body[:-2] + "xx." + tag)
    with pytest.raises(UnknownRequestError):
        signer.open("4f2a9c")


def test_the_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "receipts.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key and path.stat().st_mode & 0o777 == 0o600


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    return MemoryStateStore() if request.param == "memory" else SqliteStateStore(tmp_path / "state.sqlite")


def desk_over(store: StateStore) -> tuple[FeedbackDesk, ReceiptSigner]:
    signer = ReceiptSigner(KEY)
    return FeedbackDesk(signer, PAIR, LABELS, store), signer


def test_a_served_answer_is_judged_and_a_shadowed_one_is_paired(store: StateStore) -> None:
    desk, signer = desk_over(store)
    plain, shadowed = receipt(Variant.TEACHER, (0,)), receipt(Variant.STUDENT, (1, 1))
    kept = PairedAnswers(request_id=shadowed.nonce, teacher=(0, 1), student=(1, 1))
    desk.keep([Observation(variant=Variant.STUDENT, latency_s=0.01, answers=kept)], T0, DAY)
    items = [
        FeedbackItem(request_id=signer.sign(plain), label="positive"),
        FeedbackItem(request_id=signer.sign(shadowed), label=[0, "positive"]),
    ]
    outcomes = desk.take(items, T0 + 60, DAY)
    assert [(o.served, o.correct, o.paired) for o in outcomes] == [
        (Variant.TEACHER, False, None),
        (Variant.STUDENT, False, (True, False)),  # label 0: only the teacher was right
        (Variant.STUDENT, True, (True, True)),
    ]


def test_a_batch_is_all_or_nothing_and_a_repeat_is_refused_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    desk, signer = desk_over(SqliteStateStore(path))
    first, second = signer.sign(receipt()), signer.sign(receipt())
    desk.take([FeedbackItem(request_id=first, label=1)], T0, DAY)
    restarted, _ = desk_over(SqliteStateStore(path))
    with pytest.raises(RepeatedRequestError, match="already taken"):
        restarted.take([FeedbackItem(request_id=second, label=1), FeedbackItem(request_id=first, label=1)], T0, DAY)
    assert len(restarted.take([FeedbackItem(request_id=second, label=1)], T0, DAY)) == 1  # not taken before
    with pytest.raises(RepeatedRequestError):
        third = signer.sign(receipt())
        restarted.take([FeedbackItem(request_id=third, label=1), FeedbackItem(request_id=third, label=0)], T0, DAY)


@pytest.mark.parametrize(
    ("made", "label", "error", "needle"),
    [
        (receipt(at=T0 - 2 * DAY), 1, ExpiredRequestError, "items.0: answered 172800 s ago, past max_label_age_s"),
        (receipt(pair="0badc0de"), 1, ExpiredRequestError, "model pair no longer judged"),
        (receipt(), "neutral", LabelError, "items.0.label: 'neutral' is not one of the model's labels"),
        (receipt(), 2, LabelError, "label id 2 is not in 0..1"),
        (receipt(), [0, 1], LabelError, "2 labels for a request of 1 inputs"),
    ],
)
def test_bad_feedback_is_refused_naming_the_item(
    store: StateStore, made: Receipt, label: str | int | list[str | int], error: type[Exception], needle: str
) -> None:
    desk, signer = desk_over(store)
    with pytest.raises(error, match=needle):
        desk.take([FeedbackItem(request_id=signer.sign(made), label=label)], T0, DAY)
    assert len(desk.take([FeedbackItem(request_id=signer.sign(receipt()), label=1)], T0, DAY)) == 1


def test_the_controller_folds_labels_into_pooled_accuracy_and_saves_them() -> None:
    store, clock = MemoryStateStore(), FakeClock(T0)
    desk, signer = desk_over(store)
    controller = RolloutController(RolloutSpec(), store, clock, RecordingWebhookSender(), pair=PAIR, desk=desk)
    controller.start(actor="test", reason="labels")
    controller.tick()
    shadowed = receipt(Variant.TEACHER, (1,))
    kept = PairedAnswers(request_id=shadowed.nonce, teacher=(1,), student=(0,))
    controller.record([Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=False, answers=kept)])
    result = controller.feedback([FeedbackItem(request_id=signer.sign(shadowed), label="positive")])
    assert (result.requests, result.labels, result.paired) == (1, 1, 1)
    accuracy = store.load().evidence.accuracy  # type: ignore[union-attr]
    assert (accuracy.teacher_labelled, accuracy.teacher_correct, accuracy.only_teacher) == (1, 1, 1)
    assert controller.snapshot().evidence.labelled == 1


def test_without_a_desk_feedback_is_refused() -> None:
    controller = RolloutController(RolloutSpec(), MemoryStateStore(), FakeClock(T0), RecordingWebhookSender())
    with pytest.raises(Exception, match="feedback is not set up"):
        controller.feedback([FeedbackItem(request_id="x.y", label=1)])


def test_labels_and_shadow_verdicts_count_per_segment_too() -> None:
    evidence = add_observations(
        Evidence(),
        [
            Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=False, segment="mobile"),
            Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=True, segment="mobile"),
            Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=True, segment="other"),
        ],
        now=T0,
    )
    labelled = add_labels(
        evidence, [LabelOutcome(served=Variant.TEACHER, correct=True, paired=(True, False), segment="mobile")]
    )
    mobile = labelled.segments["mobile"]
    assert (mobile.agreement.agreed, mobile.agreement.compared) == (1, 2)
    assert (mobile.accuracy.only_teacher, labelled.accuracy.only_teacher) == (1, 1)
    assert labelled.segments["other"].accuracy.labelled == 0
    assert rollover(labelled, epoch=3).segments == labelled.segments  # pooled across stages
