"""Feedback: labels for answers given earlier, turned into accuracy evidence (no Ray, no HTTP).

The product's backend learns the truth minutes or hours after an answer and sends it back with
the answer's `request_id` (a signed receipt, rollout/receipts.py). `FeedbackDesk.take` opens
every receipt of a batch, checks its age and model pair, resolves the labels (a name or an id
of the teacher's labels, one per input), marks the ids labelled in the store and returns one
`LabelOutcome` per input: whether the served answer was right and, for a shadowed request
whose both answers the store kept (`keep`), which of the two models was. All or nothing: the
first bad item raises its FeedbackError, naming the item, and nothing of the batch is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from rollout.errors import ExpiredRequestError, LabelError, UnknownRequestError
from rollout.evidence import LabelOutcome, Observation, PairedAnswers
from rollout.receipts import MAX_REQUEST_ID_CHARS, Receipt, ReceiptSigner, pair_tag
from rollout.store import StateStore
from rollout.views import ModelPair

MAX_FEEDBACK_ITEMS = 1000
CLOCK_SKEW_S = 60.0  # a router's clock a little ahead of the controller's is no reason to refuse

Label = StrictStr | StrictInt


class FeedbackItem(BaseModel):
    """One label for one answered request: a label per input, or one label for a one-input request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    label: Label | Annotated[list[Label], Field(min_length=1, max_length=64)]  # predict's MAX_INPUTS


class FeedbackResult(BaseModel):
    """What a feedback batch added: requests, labelled inputs, and inputs with both answers known."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int
    labels: int
    paired: int


class FeedbackDesk:
    """Receipts in, label outcomes out, for one model pair (see the module docstring)."""

    def __init__(self, signer: ReceiptSigner, pair: ModelPair, labels: Sequence[str], store: StateStore) -> None:
        self._signer, self._pair, self._store = signer, pair, store
        self._tag = pair_tag(pair.teacher_id, pair.student_id)
        self._ids = {name: index for index, name in enumerate(labels)}
        self._count = len(labels)

    def keep(self, observations: Sequence[Observation], now: float, max_age_s: float) -> None:
        """Keep both answers of the shadowed requests in a router batch, for labels to come."""
        answers = [o.answers for o in observations if o.answers is not None]
        if answers:
            self._store.keep_answers(answers, now + max_age_s)

    def take(self, items: Sequence[FeedbackItem], now: float, max_age_s: float) -> list[LabelOutcome]:
        """Every item's outcomes, or the first bad item's FeedbackError with nothing taken."""
        checked = [self._check(index, item, now, max_age_s) for index, item in enumerate(items)]
        kept = self._store.redeem([receipt.nonce for receipt, _ in checked], now, now + max_age_s)
        return [outcome for receipt, truth in checked for outcome in _outcomes(receipt, truth, kept[receipt.nonce])]

    def _check(self, index: int, item: FeedbackItem, now: float, max_age_s: float) -> tuple[Receipt, list[int]]:
        where = f"items.{index}"
        try:
            receipt = self._signer.open(item.request_id)
        except UnknownRequestError as exc:
            raise UnknownRequestError(f"{where}.{exc}") from exc
        age = now - receipt.issued_at
        if age > max_age_s:
            raise ExpiredRequestError(f"{where}: answered {age:.0f} s ago, past max_label_age_s {max_age_s:g}")
        if receipt.pair != self._tag:
            raise ExpiredRequestError(f"{where}: answered by a model pair no longer judged (now {self._pair})")
        if age < -CLOCK_SKEW_S:
            raise ExpiredRequestError(f"{where}: issued {-age:.0f} s in the future (clocks out of step?)")
        labels = item.label if isinstance(item.label, list) else [item.label]
        if len(labels) != len(receipt.labels):
            raise LabelError(f"{where}.label: {len(labels)} labels for a request of {len(receipt.labels)} inputs")
        return receipt, [self._label_id(f"{where}.label", label) for label in labels]

    def _label_id(self, where: str, label: str | int) -> int:
        if isinstance(label, int):
            if 0 <= label < self._count:
                return label
            raise LabelError(f"{where}: label id {label} is not in 0..{self._count - 1}")
        if label in self._ids:
            return self._ids[label]
        raise LabelError(f"{where}: {label!r} is not one of the model's labels {sorted(self._ids)}")


def _outcomes(receipt: Receipt, truth: list[int], kept: PairedAnswers | None) -> list[LabelOutcome]:
    both = kept is not None and len(kept.teacher) == len(kept.student) == len(truth)
    outcomes = []
    for index, label in enumerate(truth):
        paired = (kept.teacher[index] == label, kept.student[index] == label) if both and kept else None
        correct = receipt.labels[index] == label
        outcomes.append(LabelOutcome(served=receipt.served, correct=correct, paired=paired, segment=receipt.segment))
    return outcomes
