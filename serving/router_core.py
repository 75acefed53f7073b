"""The router's core: choose a variant, call it, fail over, shadow, build observations. No Ray.

The Ray Serve shell (serving/router.py) owns HTTP, admission, the admin proxy and the two
background loops; it hands this class the model calls, a clock, a `random.Random` and a
metrics facade (DESIGN §4.13), so unit tests and a simulation drive the code that serves.

One request, as the shell drives it:

1. `answer(texts, key)`: take the current routing, choose the variant (sticky by key, else a
   weighted coin; a forced variant or a dogfood key overrides both, and such an answer is kept
   out of the evidence), call it within its timeout. A student that fails (reason "timeout" or
   "error") gives an error observation of the student and the teacher answers instead. A
   teacher that fails leaves the observations gathered so far plus its own error observation
   pending and raises `ModelCallError` (the shell answers 503).
2. The shell sends the answer; then `after(answered)` does the bookkeeping the client need not
   wait for: the request metric, and for a `shadow_fraction` of the "ok" answers a shadow call
   to the other model as a background task (at most `shadow_concurrency` at once; past that
   the shadow is dropped as "overload"). A shadow that answers records the comparison and puts
   the verdict (`agreed`, and per input the teacher's label with its verdict, `by_class`) on the
   student's observation only, so a pair counts once.
3. Observations wait in `pending` until the shell's flush loop takes them in batches with
   `take_pending(cap)`; `adopt(routing)` takes the controller's newer routing.

Every answer gets a `request_id`: a receipt signed with the controller's key once the shell
has it (`set_receipt_key`; rollout/receipts.py) and the routing names the model pair a label
would judge, which feedback opens later on any replica ("unsigned.<nonce>" until then).
A shadow that answers also puts both models' label ids, keyed by the receipt's nonce, on the
student's observation (`answers`), for the controller to keep until labels arrive.

A routing names the model pair it is for. While a bundle is swapped in place (serving/app.py),
a student replica may answer as a bundle the routing does not name: that answer reaches no
client (the teacher answers; failover reason "other_model") and judges nobody. A routing for a
new pair is taken whatever its version, and the old pair's pending observations are dropped.

Every time read goes through the injected clock; `drain()` waits for in-flight shadows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from rollout.evidence import Observation, PairedAnswers, Variant
from rollout.receipts import Receipt, ReceiptSigner, new_nonce, pair_tag
from rollout.spec import OTHER_SEGMENT
from rollout.views import PublishedRouting
from serving.answer import ModelAnswer
from serving.config import RouterConfig
from serving.errors import ModelCallError
from serving.router_sink import RouterMetricsSink
from serving.routing import (
    Chooser,
    bound_disagreements,
    disagreements_of,
    other,
    top1_agreement,
    total_variation,
)

log = logging.getLogger("ray.serve")  # a name only (no Ray import): Serve shows it in the replica's log

ModelCall = Callable[[list[str]], Awaitable[ModelAnswer]]
Outcome = Literal["ok", "failover"]
UNSIGNED = "unsigned."
KEEP_BATCHES = 20  # controller unreachable for a while: keep only the newest 20 batches' worth


@dataclass(frozen=True, slots=True)
class Answered:
    """An answered request, as the after-response bookkeeping needs it."""

    answer: ModelAnswer
    outcome: Outcome
    latency_s: float  # from `started` (the request's arrival) to the answer
    texts: list[str]
    observations: list[Observation]
    routing: PublishedRouting  # as it was when the request arrived: its version and shadow fraction apply
    segment: str | None = None  # declared by the spec, or "other"; None when the spec declares none
    request_id: str = ""  # the signed receipt, or UNSIGNED + nonce (no key or no pair yet)
    nonce: str = ""  # the receipt's nonce: keys the shadow's answers for feedback
    forced: bool = False  # a forced variant or a dogfood key chose the model, not the coin

    @property
    def signed(self) -> bool:
        """Whether feedback can label this answer."""
        return bool(self.request_id) and not self.request_id.startswith(UNSIGNED)


@dataclass(frozen=True, slots=True)
class _Call:
    """One timed model call: its observation, and the answer or what it failed with."""

    observation: Observation
    answer: ModelAnswer | None = None
    error: Exception | None = None


class RouterCore:
    """One router replica's logic (see the module docstring); not thread-safe: one event loop."""

    def __init__(
        self,
        models: Mapping[Variant, ModelCall],
        config: RouterConfig,
        clock: Callable[[], float],
        rng: random.Random,
        metrics: RouterMetricsSink,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.configure(config, models)
        self._clock = clock
        self._wall = wall or clock  # receipts carry the time of answer in seconds the controller shares
        self._signer: ReceiptSigner | None = None
        self._chooser = Chooser(rng)
        self._metrics = metrics
        self._routing = PublishedRouting(weight=0.0, shadow_fraction=0.0, version=0)
        self._weight = 0.0  # teacher only until the controller's routing is adopted
        self._pending: list[Observation] = []
        self._shadows: set[asyncio.Task[None]] = set()
        metrics.set_weight(self._weight)

    def configure(self, config: RouterConfig, models: Mapping[Variant, ModelCall]) -> None:
        """Take new settings and model calls in place (the shell's `reconfigure`): calls in flight
        finish on the old ones, and the routing and pending observations are kept."""
        self._models = dict(models)
        self._timeouts = {Variant.TEACHER: config.teacher_timeout_s, Variant.STUDENT: config.student_timeout_s}
        self._shadow_slots = config.shadow_concurrency

    def reseed(self, seed: int) -> None:
        """Make the routing coin reproducible from here on (tests, simulations)."""
        self._chooser = Chooser(random.Random(seed))

    def set_receipt_key(self, key: bytes) -> None:
        """Sign request ids from now on (the controller's key, shared by every replica)."""
        self._signer = ReceiptSigner(key)

    @property
    def has_receipt_key(self) -> bool:
        return self._signer is not None

    @property
    def weight(self) -> float:
        """The student's share of traffic this core applies (0..1)."""
        return self._weight

    @property
    def routing(self) -> PublishedRouting:
        return self._routing

    def adopt(self, routing: PublishedRouting) -> bool:
        """Take the controller's routing unless it is older than the current one; True when taken.

        A routing for another model pair (a bundle swapped in place) is always taken, and the
        observations still pending belong to the old pair's rollout: they are dropped."""
        if routing.same_pair(self._routing):
            if routing.version < self._routing.version:
                return False
        else:
            self._pending.clear()
        self._routing, self._weight = routing, routing.weight
        self._metrics.set_weight(self._weight)
        return True

    # --- the request path -------------------------------------------------------------------

    async def answer(
        self,
        texts: list[str],
        key: str | None = None,
        started: float | None = None,
        segment: str | None = None,
        forced: Variant | None = None,
    ) -> Answered:
        """Answer one request. `started` (on this core's clock) is when it arrived; default now.
        `segment` is the one the request names (any name: an undeclared one counts as "other").
        `forced` (an authenticated X-Kdcanary-Variant), or a key the routing lists as a dogfood
        key (the student), chooses the model instead of the coin: such an answer is not a random
        draw, so it is kept out of the evidence (no observation, no shadow, no signed receipt).

        Raises ModelCallError when the teacher fails; its observations are pending by then."""
        started = self._clock() if started is None else started
        routing = self._routing
        segment = _segment_of(segment, routing)
        if forced is None and key is not None and key in routing.dogfood_keys:
            forced = Variant.STUDENT
        outcome: Outcome = "ok"
        observations: list[Observation] = []
        if (forced or self._chooser.choose(self._weight, key)) is Variant.STUDENT:
            student = await self._call(Variant.STUDENT, texts, routing)
            if student.answer is not None and _of_pair(student.answer, routing):
                latency = self._clock() - started
                answered = Answered(student.answer, "ok", latency, texts, [student.observation], routing, segment)
                return self._receipted(replace(answered, forced=forced is not None))
            if student.answer is None:
                self._record_failover(student.error)
                observations.append(student.observation)
            else:  # a student this rollout has not vetted (mid-swap): the teacher answers, nobody is judged
                self._metrics.record_failover("other_model")
            outcome = "failover"
        teacher = await self._call(Variant.TEACHER, texts, routing)
        if teacher.answer is None:  # the teacher's own errors are evidence too (the error gate compares)
            log.error("teacher failed: %s", type(teacher.error).__name__)
            if forced is None:
                self._pending.extend([*observations, teacher.observation])
            raise ModelCallError(f"teacher failed: {type(teacher.error).__name__}") from teacher.error
        observations.append(teacher.observation)
        latency = self._clock() - started
        answered = Answered(
            teacher.answer, outcome, latency, texts, observations, routing, segment, forced=bool(forced)
        )
        return self._receipted(answered)

    def _receipted(self, answered: Answered) -> Answered:
        """`answered` with its request id: what was answered, signed (see the module docstring)."""
        nonce = new_nonce()
        routing, answer = answered.routing, answered.answer
        if self._signer is None or routing.teacher_id is None or routing.student_id is None or answered.forced:
            return replace(answered, request_id=UNSIGNED + nonce, nonce=nonce)  # nothing a label may judge
        receipt = Receipt(
            issued_at=self._wall(),
            pair=pair_tag(routing.teacher_id, routing.student_id),
            version=routing.version,
            served=answer.variant,
            labels=tuple(answer.probabilities.argmax(axis=1).tolist()),
            nonce=nonce,
            segment=answered.segment,
        )
        return replace(answered, request_id=self._signer.sign(receipt), nonce=nonce)

    async def _call(self, variant: Variant, texts: list[str], routing: PublishedRouting) -> _Call:
        """Call `variant` within its timeout; any Exception is a failed call (an error observation
        of the model the routing names)."""
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeouts[variant]):  # unlike wait_for, no extra task per call
                answer = await self._models[variant](texts)
        except Exception as exc:
            asked = routing.teacher_id if variant is Variant.TEACHER else routing.student_id
            failed = Observation(variant=variant, latency_s=self._clock() - started, error=True, model_id=asked)
            return _Call(failed, error=exc)
        latency = self._clock() - started
        observation = Observation(
            variant=answer.variant, latency_s=latency, cost=answer.cost_dollars, model_id=answer.model_id
        )
        return _Call(observation, answer)

    def _record_failover(self, error: Exception | None) -> None:
        reason = "timeout" if isinstance(error, TimeoutError) else "error"
        self._metrics.record_failover(reason)
        log.warning("student failed (%s: %s); failing over to the teacher", reason, type(error).__name__)

    # --- after the answer is sent --------------------------------------------------------------

    async def after(self, answered: Answered) -> None:
        """The bookkeeping the client need not wait for. Async so that it runs on the event loop
        (a shadow is a task on it), never in a thread pool."""
        self._metrics.record_request(answered.answer.variant, answered.outcome, answered.latency_s)
        if answered.forced:  # answered and counted, never evidence (see `answer`)
            self._metrics.record_forced(answered.answer.variant)
            return
        if answered.outcome == "ok" and self._chooser.sample(answered.routing.shadow_fraction):
            self._start_shadow(answered)
        else:
            self._pending.extend(answered.observations)

    def _start_shadow(self, answered: Answered) -> None:
        if len(self._shadows) >= self._shadow_slots:  # shadows never queue: they would lag and pile up
            self._metrics.record_shadow_dropped("overload")
            self._pending.extend(answered.observations)
            return
        task = asyncio.get_running_loop().create_task(self._shadow(answered))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, answered: Answered) -> None:
        primary = answered.answer
        shadow = await self._call(other(primary.variant), answered.texts, answered.routing)
        if shadow.answer is None:
            self._metrics.record_shadow_dropped("error")
            self._pending.extend([*answered.observations, shadow.observation])
            return
        if not (_of_pair(primary, answered.routing) and _of_pair(shadow.answer, answered.routing)):  # mid-swap
            self._metrics.record_shadow_dropped("other_model")
            self._pending.extend(answered.observations)
            return
        agree = top1_agreement(primary.probabilities, shadow.answer.probabilities)
        divergence = total_variation(primary.probabilities, shadow.answer.probabilities)
        self._metrics.record_comparison(int(agree.sum()), divergence.tolist())
        teacher, student = (primary, shadow.answer) if primary.variant is Variant.TEACHER else (shadow.answer, primary)
        teacher_ids = teacher.probabilities.argmax(axis=1).tolist()
        # On the student's observation only: one verdict per request, one per input by the teacher's label.
        verdicts: dict[str, object] = {
            "agreed": bool(agree.all()),
            "by_class": tuple(zip((teacher.label_names[i] for i in teacher_ids), map(bool, agree), strict=True)),
            "segment": answered.segment,
        }
        if (logged := self._logged(answered.routing, agree)).any():
            where = (answered.nonce, self._wall(), answered.texts, answered.segment)
            verdicts["disagreements"] = disagreements_of(*where, teacher, student, logged)
        if answered.signed:  # labels may come back for this request: keep both answers
            student_ids = tuple(student.probabilities.argmax(axis=1).tolist())
            verdicts["answers"] = PairedAnswers(
                request_id=answered.nonce, teacher=tuple(teacher_ids), student=student_ids
            )
        for obs in [*answered.observations, shadow.observation]:
            self._pending.append(obs.model_copy(update=verdicts) if obs.variant is Variant.STUDENT else obs)

    def _logged(self, routing: PublishedRouting, agree: np.ndarray) -> np.ndarray:
        """Which inputs of a compared request go to the disagreement log: its disagreeing ones
        when the request is sampled for them, its agreeing ones when sampled for those."""
        logged = np.zeros(len(agree), dtype=bool)
        if not agree.all() and self._chooser.sample(routing.log_disagreements):
            logged |= ~agree
        if routing.log_agreements and agree.any() and self._chooser.sample(routing.log_agreements):
            logged |= agree
        return logged

    async def drain(self) -> None:
        """Wait until no shadow call is in flight (tests, simulations, shutdown)."""
        while self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    # --- observations for the controller ----------------------------------------------------

    def take_pending(self, cap: int) -> Iterator[list[Observation]]:
        """The pending observations in batches of at most `cap`, oldest first, each removed as it
        is yielded (one lost if its send fails; stop iterating to keep the rest for next time).

        Past KEEP_BATCHES x cap pending (the controller was unreachable) only the newest that
        many are kept, checked once when iteration starts: observations that arrive while the
        batches go out join this round and are not trimmed."""
        if len(self._pending) > KEEP_BATCHES * cap:
            del self._pending[: len(self._pending) - KEEP_BATCHES * cap]
        while self._pending:
            batch, self._pending = self._pending[:cap], self._pending[cap:]
            yield bound_disagreements(batch, self._routing.log_per_batch)


def _segment_of(segment: str | None, routing: PublishedRouting) -> str | None:
    """The segment a request counts in: its own when declared, else "other" (None when none are)."""
    if not routing.segments:
        return None
    return segment if segment in routing.segments else OTHER_SEGMENT


def _of_pair(answer: ModelAnswer, routing: PublishedRouting) -> bool:
    """Whether `answer` came from the model the routing is for (any model when it names none)."""
    expected = routing.teacher_id if answer.variant is Variant.TEACHER else routing.student_id
    return expected is None or answer.model_id == expected
