"""serving.router_core: the router's logic without Ray, on fake models, a FakeClock, a seeded
Random and RecordingMetrics (answer -> after -> drain -> assert observations and metrics)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from rollout.clock import FakeClock
from rollout.evidence import Observation, PairedAnswers, Variant
from rollout.receipts import ReceiptSigner, pair_tag
from rollout.views import PublishedRouting
from serving.answer import ModelAnswer
from serving.config import RouterConfig
from serving.errors import ModelCallError
from serving.router_core import UNSIGNED, Answered, ModelCall, RouterCore
from serving.router_sink import RecordingMetrics
from serving.routing import sticky_variant

T, S = Variant.TEACHER, Variant.STUDENT
POSITIVE, NEGATIVE = [0.2, 0.8], [0.9, 0.1]
PAIR_IDS = {"teacher_id": "teacher-1", "student_id": "student-1"}  # what the fake models answer as
TIMEOUT_S = 0.05  # a hanging model is cut off after this long (real time); nothing asserts on speed


class Models:
    """Fake model calls: each answers a fixed row per input, advancing the clock by `takes_s`,
    or raises, or hangs past the timeout, or waits for `release` (to hold a call in flight)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rows = {T: POSITIVE, S: POSITIVE}
        self.takes_s = {T: 0.5, S: 0.25}  # exact in binary: latencies compare with ==
        self.failure: dict[Variant, str] = {}  # variant -> "error" | "hang" | "gate"
        self.release = asyncio.Event()
        self.calls: list[Variant] = []

    def call(self, variant: Variant) -> ModelCall:
        async def model(texts: list[str]) -> ModelAnswer:
            self.calls.append(variant)
            failure = self.failure.get(variant)
            if failure == "error":
                raise RuntimeError("model replica died")
            if failure == "hang":
                await asyncio.sleep(10)
            if failure == "gate":
                await self.release.wait()
            self.clock.advance(self.takes_s[variant])
            probabilities = np.tile(np.array(self.rows[variant], dtype=np.float32), (len(texts), 1))
            return ModelAnswer(f"{variant.value}-1", variant, ("neg", "pos"), probabilities, 0.001, 0.5)

        return model


class Rig:
    def __init__(self, weight: float = 0.0, shadow: float = 0.0, slots: int = 8, seed: int = 7) -> None:
        self.clock = FakeClock()
        self.models = Models(self.clock)
        self.metrics = RecordingMetrics()
        config = RouterConfig(
            student_timeout_s=TIMEOUT_S,
            teacher_timeout_s=5.0,  # gated teacher calls are released well before this
            shadow_concurrency=slots,
        )
        calls = {v: self.models.call(v) for v in (T, S)}
        self.core = RouterCore(calls, config, self.clock.now, random.Random(seed), self.metrics)
        self.core.adopt(PublishedRouting(weight=weight, shadow_fraction=shadow, version=0))

    async def request(self, texts: list[str] | None = None, key: str | None = None) -> Answered:
        """One request end to end: answer, then the after-response bookkeeping."""
        answered = await self.core.answer(texts or ["a fine film"], key)
        await self.core.after(answered)
        return answered

    def pending(self, cap: int = 1000) -> list[Observation]:
        return [obs for batch in self.core.take_pending(cap) for obs in batch]


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, timeout=20))


def obs(
    variant: Variant,
    latency_s: float,
    *,
    error: bool = False,
    agreed: bool | None = None,
    by_class: tuple[tuple[str, bool], ...] = (),
) -> Observation:
    cost, model_id = (0.0, None) if error else (0.5, f"{variant.value}-1")  # a failed call: the routing's id
    return Observation(
        variant=variant,
        latency_s=latency_s,
        error=error,
        cost=cost,
        agreed=agreed,
        model_id=model_id,
        by_class=by_class,
    )


def test_the_core_imports_no_ray() -> None:
    check = "import serving.router_core, sys; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_weight_0_sends_everything_to_the_teacher_and_1_to_the_student() -> None:
    async def test() -> None:
        for weight, variant in ((0.0, T), (1.0, S)):
            rig = Rig(weight=weight)
            answers = [await rig.request() for _ in range(20)]
            assert {a.answer.variant for a in answers} == {variant} and rig.models.calls == [variant] * 20
            assert rig.metrics.requests == {(variant, "ok"): 20} and rig.metrics.weight == weight
            assert rig.pending() == [obs(variant, rig.models.takes_s[variant])] * 20

    run(test())


def paired(weight: float, shadow: float, version: int, student: str = "student-1") -> PublishedRouting:
    return PublishedRouting(
        weight=weight, shadow_fraction=shadow, version=version, teacher_id="teacher-1", student_id=student
    )


def test_a_student_the_routing_does_not_name_never_answers_a_client() -> None:
    async def test() -> None:
        rig = Rig()
        rig.core.adopt(paired(1.0, 0.0, version=4, student="student-2"))  # student-1 still answers: mid-swap
        answered = await rig.request()
        assert (answered.answer.variant, answered.outcome) == (T, "failover")
        rig.core.adopt(paired(0.0, 1.0, version=5, student="student-2"))
        await rig.request()
        await rig.core.drain()
        assert rig.metrics.failovers == {"other_model": 1} and rig.metrics.shadow_dropped == {"other_model": 1}
        assert rig.pending() == [obs(T, 0.5)] * 2  # nothing about either student

    run(test())


def test_a_routing_for_another_pair_is_taken_whatever_its_version_and_drops_the_old_pairs_observations() -> None:
    async def test() -> None:
        rig = Rig()
        assert rig.core.adopt(paired(1.0, 0.0, version=7))
        await rig.request()
        assert not rig.core.adopt(paired(0.5, 0.0, version=6))  # same pair, older: ignored
        assert rig.core.adopt(paired(0.0, 0.0, version=0, student="student-2"))
        assert rig.core.weight == 0.0 and rig.pending() == []

    run(test())


def test_a_routing_key_sticks_to_its_bucket() -> None:
    async def test() -> None:
        rig = Rig(weight=0.5)
        keys = [f"user-{i}" for i in range(40)]
        for _ in range(2):
            chosen = [(await rig.request(key=key)).answer.variant for key in keys]
            assert chosen == [sticky_variant(key, 0.5) for key in keys]
        assert {T, S} <= set(chosen)

    run(test())


def test_a_failing_student_fails_over_to_the_teacher() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0, shadow=1.0)  # a failed-over request is never shadowed
        rig.models.failure[S] = "error"
        answered = await rig.request()
        assert answered.answer.variant is T and answered.outcome == "failover"
        assert answered.observations == [obs(S, 0.0, error=True), obs(T, 0.5)]
        assert rig.metrics.failovers == {"error": 1} and rig.metrics.requests == {(T, "failover"): 1}
        await rig.core.drain()
        assert rig.pending() == answered.observations and rig.models.calls == [S, T]

    run(test())


def test_a_student_past_its_timeout_fails_over_with_reason_timeout() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0)
        rig.models.failure[S] = "hang"
        answered = await rig.request()
        assert answered.answer.variant is T and answered.outcome == "failover"
        assert rig.metrics.failovers == {"timeout": 1}
        assert [(o.variant, o.error) for o in rig.pending()] == [(S, True), (T, False)]

    run(test())


def test_a_failing_teacher_raises_and_leaves_its_observations_pending() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0)
        rig.models.failure = {S: "error", T: "error"}
        with pytest.raises(ModelCallError, match="teacher failed: RuntimeError"):
            await rig.core.answer(["a fine film"], None)
        assert rig.pending() == [obs(S, 0.0, error=True), obs(T, 0.0, error=True)]
        assert rig.metrics.failovers == {"error": 1} and not rig.metrics.requests  # no answer, no request

        rig = Rig(weight=0.0)
        rig.models.failure[T] = "error"
        with pytest.raises(ModelCallError):
            await rig.core.answer(["a fine film"], None)
        assert rig.pending() == [obs(T, 0.0, error=True)] and not rig.metrics.failovers

    run(test())


def test_a_shadow_records_the_comparison_and_the_verdict_on_the_student_only() -> None:
    async def test() -> None:
        for weight, primary in ((1.0, S), (0.0, T)):
            rig = Rig(weight=weight, shadow=1.0)
            rig.models.rows[S] = NEGATIVE  # the models disagree on every input
            rig.models.rows[T] = POSITIVE
            answered = await rig.request(["first", "second"])
            assert answered.answer.variant is primary and rig.pending() == []  # the shadow is still out
            await rig.core.drain()
            seen = {o.variant: o for o in rig.pending()}
            assert seen[S].agreed is False and seen[T].agreed is None and len(seen) == 2
            assert rig.metrics.comparisons == 2 and rig.metrics.agreements == 0
            assert rig.metrics.divergences == pytest.approx([0.7, 0.7])

    run(test())


def test_agreeing_models_mark_the_student_agreed() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0, shadow=1.0)
        await rig.request(["first", "second"])
        await rig.core.drain()
        both = (("pos", True), ("pos", True))  # per input: the teacher's label, and whether the student matched it
        assert rig.pending() == [obs(S, 0.25, agreed=True, by_class=both), obs(T, 0.5)]
        assert (rig.metrics.comparisons, rig.metrics.agreements, rig.metrics.divergences) == (2, 2, [0.0, 0.0])

    run(test())


def test_a_disagreement_is_filed_under_the_teachers_label() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=1.0)
        rig.models.rows[T] = NEGATIVE
        await rig.request(["a review"])
        await rig.core.drain()
        assert rig.pending() == [obs(T, 0.5), obs(S, 0.25, agreed=False, by_class=(("neg", False),))]

    run(test())


def test_a_shadow_past_the_free_slots_is_dropped_as_overload() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0, shadow=1.0, slots=1)
        rig.models.failure[T] = "gate"  # the first shadow (to the teacher) holds the only slot
        first = await rig.request()
        second = await rig.request()
        assert rig.metrics.shadow_dropped == {"overload": 1}
        assert rig.pending() == second.observations  # kept, without a verdict
        rig.models.release.set()
        await rig.core.drain()
        verdicts = {"agreed": True, "by_class": (("pos", True),)}
        assert rig.pending() == [first.observations[0].model_copy(update=verdicts), obs(T, 0.5)]

    run(test())


def test_a_failed_shadow_records_error_and_an_error_observation() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0, shadow=1.0)
        rig.models.failure[T] = "error"
        await rig.request()
        await rig.core.drain()
        assert rig.metrics.shadow_dropped == {"error": 1} and rig.metrics.comparisons == 0
        assert rig.pending() == [obs(S, 0.25), obs(T, 0.0, error=True)]
        assert rig.metrics.requests == {(S, "ok"): 1}

    run(test())


def test_the_shadow_fraction_samples_requests() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=0.25, seed=3)
        for _ in range(400):
            await rig.request()
            await rig.core.drain()  # no shadow still out when the next request comes: no overload
        shadowed = rig.models.calls.count(S)
        assert 60 < shadowed < 140 and rig.metrics.comparisons == shadowed

    run(test())


def test_adopt_takes_newer_or_equal_versions_only() -> None:
    rig = Rig(weight=0.0)
    assert rig.core.routing.version == 0 and rig.metrics.weight == 0.0
    assert rig.core.adopt(PublishedRouting(weight=0.25, shadow_fraction=0.1, version=4))
    assert rig.core.weight == 0.25 and rig.metrics.weight == 0.25
    assert not rig.core.adopt(PublishedRouting(weight=1.0, shadow_fraction=0.0, version=3))
    assert rig.core.weight == 0.25 and rig.core.routing.version == 4 and rig.metrics.weight == 0.25
    assert rig.core.adopt(PublishedRouting(weight=0.5, shadow_fraction=0.0, version=4))
    assert rig.core.weight == 0.5


def test_a_request_keeps_the_routing_it_arrived_with() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=1.0)
        rig.models.failure[T] = "gate"
        in_flight = asyncio.create_task(rig.core.answer(["a fine film"], None))
        await asyncio.sleep(0)  # the request has chosen and is waiting on the teacher
        rig.core.adopt(PublishedRouting(weight=1.0, shadow_fraction=0.0, version=7))
        rig.models.release.set()
        answered = await in_flight
        assert answered.answer.variant is T and answered.routing.version == 0
        await rig.core.after(answered)  # shadowed at the fraction it arrived with (1), not today's 0
        await rig.core.drain()
        assert rig.models.calls == [T, S] and rig.metrics.comparisons == 1

    run(test())


def test_latencies_come_from_the_injected_clock() -> None:
    async def test() -> None:
        rig = Rig(weight=1.0)
        rig.models.takes_s[S] = 0.375
        arrived = rig.clock.now() - 0.125  # admission and parsing, before the core saw the request
        answered = await rig.core.answer(["a fine film"], None, arrived)
        assert answered.observations == [obs(S, 0.375)] and answered.latency_s == 0.5
        await rig.core.after(answered)
        assert rig.metrics.latencies_s == [answered.latency_s]

    run(test())


def test_take_pending_yields_batches_of_at_most_cap() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0)
        for _ in range(5):
            await rig.request()
        assert [len(batch) for batch in rig.core.take_pending(2)] == [2, 2, 1]
        assert list(rig.core.take_pending(2)) == []

        for _ in range(5):
            await rig.request()
        for _ in rig.core.take_pending(2):  # the send failed: the rest wait for the next round
            break
        assert len(rig.pending()) == 3

    run(test())


def test_take_pending_keeps_the_newest_20_batches_when_behind() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0)
        for i in range(45):
            rig.models.takes_s[T] = float(i)  # number each observation by its latency
            await rig.request()
        batches = rig.core.take_pending(2)
        first = next(batches)
        await rig.request()  # arrives while the batches go out: joins this round, not trimmed
        rest = [obs.latency_s for batch in batches for obs in batch]
        assert [o.latency_s for o in first] == [5.0, 6.0] and rest == [*map(float, range(7, 45)), 44.0]

    run(test())


def test_request_ids_are_signed_receipts_once_the_key_is_known_and_shadows_keep_both_answers() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=1.0)
        unsigned = await rig.request(["before the key"])
        assert unsigned.request_id == f"unsigned.{unsigned.nonce}"
        await rig.core.drain()
        assert all(o.answers is None for o in rig.pending())
        rig.core.set_receipt_key(bytes(32))
        assert not (await rig.request(["no pair named yet"])).signed  # no rollout a label could judge
        rig.core.adopt(PublishedRouting(weight=0.0, shadow_fraction=1.0, version=1, **PAIR_IDS))
        rig.models.rows[T] = NEGATIVE
        answered = await rig.request(["one", "two"])
        receipt = ReceiptSigner(bytes(32)).open(answered.request_id)
        assert (receipt.served, receipt.labels, receipt.nonce) == (T, (0, 0), answered.nonce)
        assert receipt.pair == pair_tag("teacher-1", "student-1") and receipt.issued_at == rig.clock.now()
        await rig.core.drain()
        (student,) = [o for o in rig.pending() if o.variant is S and o.answers is not None]
        assert student.answers == PairedAnswers(request_id=answered.nonce, teacher=(0, 0), student=(1, 1))

    run(test())


def test_a_request_counts_in_its_declared_segment_or_other_and_its_receipt_says_which() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=1.0)
        plain = await rig.request(["no segments declared"])
        assert plain.segment is None
        segments = ("web", "mobile")
        rig.core.adopt(PublishedRouting(weight=0.0, shadow_fraction=1.0, version=1, segments=segments, **PAIR_IDS))
        rig.core.set_receipt_key(bytes(32))
        declared = await rig.core.answer(["a"], segment="mobile")
        undeclared = await rig.core.answer(["b"], segment="smart-fridge")
        unnamed = await rig.core.answer(["c"])
        assert [a.segment for a in (declared, undeclared, unnamed)] == ["mobile", "other", "other"]
        assert ReceiptSigner(bytes(32)).open(declared.request_id).segment == "mobile"
        await rig.core.after(declared)
        await rig.core.drain()
        students = [o for o in rig.pending() if o.variant is S and o.agreed is not None]
        assert [o.segment for o in students] == [None, "mobile"]

    run(test())


def test_a_forced_variant_or_a_dogfood_key_chooses_the_model_and_stays_out_of_the_evidence() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=1.0)
        rig.core.set_receipt_key(bytes(32))
        routing = paired(0.0, 1.0, 1).model_copy(update={"dogfood_keys": ("dogfooder",)})
        rig.core.adopt(routing)
        forced = await rig.core.answer(["qa"], forced=S)
        await rig.core.after(forced)
        dogfood = await rig.request(key="dogfooder")
        rig.models.rows[S] = NEGATIVE  # would be a disagreement, if anything were compared
        teacher = await rig.core.answer(["support"], key="dogfooder", forced=T)  # the header wins
        await rig.core.after(teacher)
        await rig.core.drain()
        assert [a.answer.variant for a in (forced, dogfood, teacher)] == [S, S, T]
        assert all(a.forced and a.request_id.startswith(UNSIGNED) for a in (forced, dogfood, teacher))
        assert rig.pending() == [] and rig.metrics.comparisons == 0  # not drawn at random: never judged
        assert rig.metrics.forced == {S: 2, T: 1} and rig.metrics.requests == {(S, "ok"): 2, (T, "ok"): 1}
        drawn = await rig.request(key="someone else")  # weight 0: the coin sends everyone else to the teacher
        assert drawn.answer.variant is T and not drawn.forced

    run(test())


def test_a_forced_student_that_fails_is_answered_by_the_teacher_and_judged_by_nobody() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0)
        rig.models.failure[S] = "error"
        answered = await rig.core.answer(["qa"], forced=S)
        await rig.core.after(answered)
        assert (answered.answer.variant, answered.outcome, answered.forced) == (T, "failover", True)
        assert rig.pending() == [] and rig.metrics.failovers == {"error": 1}

    run(test())


def test_a_disagreement_is_logged_with_both_answers_only_when_the_routing_asks() -> None:
    async def test() -> None:
        for rate, logged in ((0.0, 0), (1.0, 2)):
            rig = Rig(weight=0.0, shadow=1.0)
            routing = PublishedRouting(weight=0.0, shadow_fraction=1.0, version=1, log_disagreements=rate)
            rig.core.adopt(routing.model_copy(update={"log_per_batch": 1000}))
            rig.models.rows[S] = NEGATIVE  # the models disagree on every input
            rig.models.rows[T] = POSITIVE
            await rig.request(["first", "second"])
            await rig.core.drain()
            entries = [entry for obs in rig.pending() for entry in obs.disagreements]
            assert len(entries) == logged
        first = entries[0]
        assert (first.text, first.teacher_label, first.student_label) == ("first", "pos", "neg")
        assert first.id.endswith(":0") and entries[1].id.endswith(":1")
        assert first.teacher_probabilities == pytest.approx(POSITIVE, abs=1e-6)

    run(test())


def test_agreeing_inputs_are_logged_only_when_the_routing_samples_them_too() -> None:
    async def test() -> None:
        for agreements, logged in ((0.0, 0), (1.0, 2)):
            rig = Rig(weight=0.0, shadow=1.0)
            rig.core.adopt(
                PublishedRouting(
                    weight=0.0, shadow_fraction=1.0, version=1, log_disagreements=1.0, log_agreements=agreements,
                    log_per_batch=1000,
                )
            )  # fmt: skip
            rig.models.rows[S] = rig.models.rows[T] = POSITIVE  # the models agree on every input
            await rig.request(["first", "second"])
            await rig.core.drain()
            entries = [entry for obs in rig.pending() for entry in obs.disagreements]
            assert len(entries) == logged
        assert all(e.teacher_label == e.student_label == "pos" for e in entries)

    run(test())


def test_a_batch_carries_at_most_the_routings_share_of_disagreements() -> None:
    async def test() -> None:
        rig = Rig(weight=0.0, shadow=1.0)
        routing = PublishedRouting(weight=0.0, shadow_fraction=1.0, version=1, log_disagreements=1.0, log_per_batch=3)
        rig.core.adopt(routing)
        rig.models.rows[S] = NEGATIVE
        for _ in range(5):
            await rig.request(["a", "b"])
        await rig.core.drain()
        batches = list(rig.core.take_pending(1000))
        assert sum(len(o.disagreements) for batch in batches for o in batch) == 3

    run(test())
