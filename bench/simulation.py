"""Simulated rollouts that drive the shipped code: one `RouterCore`, the real `RolloutController`.

A run is a function of (decision-maker, student profile, scenario, seed): no Ray, no threads,
no real sleeping, no I/O, so every figure in bench/results/rollout.json can be replayed. Only
the world around the shipped code is simulated; every rule about routing, failover, shadowing,
observations, evidence and decisions is the core's or the controller's own (DESIGN §4.14).

The world (bench/world.py). Requests arrive as a Poisson process at
`Scenario.requests_per_s`, each with its truth drawn from a seeded Generator independently of
the routing: whether each model fails on it, whether the student's answer agrees with the
teacher's, both models' lognormal latencies, and whether it falls in the student's weak slice.
The simulated model calls answer a request as its truth says, so the kdcanary run and the
baseline run with the same seed see the same requests (common random numbers); only the
routing the decision-maker publishes, and the router's own coin, differ.

Time. One `FakeClock` is the world's time: the loop advances it to each arrival and to each
control event, and the controller reads it. A model call cannot advance it: requests overlap
in reality, and moving the shared clock by a call's latency would serialise them. Instead the
core gets its own clock, `SimulatedModels.now`: the current request's arrival plus the
simulated seconds its model calls have spent. Each call adds its latency before it returns
and never suspends, so the core, timing a call as it always does (clock after minus clock
before), records the drawn latency (a failover's answer latency is the sum of both calls).
A request is answered at its arrival instant. Its shadow is a task on the event loop, as in
serving, and finishes when the loop next drains the core: after at most `shadow_concurrency`
requests (so none is dropped for overload, as none would be at these rates; draining per
batch takes fewer event-loop turns than per request) and before every control event, so a
flush carries everything that arrived before it. The tens of milliseconds that separate a
request's observations in reality matter to nothing a 0.5 s flush or a 1 s tick sees.
Drawn latencies stay far below the router's timeouts (2 s and 10 s by default) for the
profiles the benchmark uses: `asyncio.timeout` runs on the real loop's clock and would not
fire for a simulated delay.

Control events, as the Ray shells schedule them: the router flushes
`take_pending(flush_max_observations)` to `record` every `flush_interval_s`, and the
decision-maker ticks whenever the clock reaches `next_tick_at()` (serving/rollout_deployment.py);
`record` ticks at once itself when the controller finds it urgent. The router adopts `routing()`
(`RouterCore.adopt`) at the start and after every control event: the controller answers a
router's held routing request as soon as its routing changes (serving/long_poll.py), within
milliseconds that matter to nothing here. At one instant the order is flush, tick, adopt. The
loop ends when the decision-maker has finished or at `max_seconds`.

Labels. A profile with `labels` has some requests' true labels come back after a delay
(bench/world.py, `TruthLabels`): each answered request's signed request id waits in a queue
until its label is due, and every flush sends the labels due by then to the controller's
`feedback` (the same desk, receipts and ledger serving uses). A decision-maker without
`feedback` (the baseline) never sees them.

The decision-maker is a `DecisionMaker`: `RolloutController` is one as it is; bench/baseline.py
has a Flagger-style analysis that is one too and runs through this same loop.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from bench.world import LABELS, Draw, RequestStream, SimulatedModels, StudentProfile, TruthLabels
from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.evidence import Observation, Variant
from rollout.feedback import FeedbackDesk, FeedbackItem
from rollout.receipts import ReceiptSigner
from rollout.spec import RolloutSpec
from rollout.status import Phase
from rollout.store import MemoryStateStore
from rollout.views import ModelPair, PublishedRouting
from rollout.webhooks import RecordingWebhookSender
from serving import router_core
from serving.config import RouterConfig
from serving.errors import ModelCallError
from serving.router_core import RouterCore
from serving.router_sink import RecordingMetrics

_STRICT = ConfigDict(frozen=True, extra="forbid")
PAIR = ModelPair(teacher_id="simulated-teacher", student_id="simulated-student")  # the models' ids (world.py)
RECEIPT_KEY = bytes(range(32))
Feedback = Callable[[list[FeedbackItem]], object]


class Scenario(BaseModel):
    """The traffic a rollout sees, the router that serves it, and how long the run may last."""

    model_config = _STRICT

    requests_per_s: float = Field(default=50.0, ge=0.0)
    max_seconds: float = Field(default=1800.0, gt=0.0)
    router: RouterConfig = RouterConfig()


class Result(StrEnum):
    """How a simulated rollout ended."""

    COMPLETED = "completed"  # the student reached 100 % and was promoted
    ROLLED_BACK = "rolled_back"  # the student was sent back to 0 %
    TIMED_OUT = "timed_out"  # still undecided (holding) at `Scenario.max_seconds`


class Outcome(BaseModel):
    """One simulated rollout: how it ended, when, and after how much student evidence."""

    model_config = _STRICT

    system: str
    seed: int
    result: Result
    seconds: float
    student_observations: int
    student_served: int
    comparisons: int
    cause: str | None = None
    stage_index: int
    weight: float


# --- the loop -----------------------------------------------------------------------------------


class DecisionMaker(Protocol):
    """What the loop drives, as the Ray shells drive the controller: routers `record` batches
    and follow `routing()`, a tick loop calls `tick()` at `next_tick_at()`. `RolloutController`
    is one as it is."""

    def record(self, observations: Sequence[Observation]) -> object: ...

    def tick(self) -> object: ...

    def next_tick_at(self) -> float: ...

    def routing(self) -> PublishedRouting: ...


@dataclass(frozen=True)
class Run:
    """What one run measured: simulated seconds, observations the decision-maker received,
    and from the router's own metrics the requests the student served and the comparisons."""

    seconds: float
    student_observations: int
    student_served: int
    comparisons: int


class _Loop:
    """One run's world around one `RouterCore` (see the module docstring)."""

    def __init__(
        self,
        decider: DecisionMaker,
        profile: StudentProfile,
        scenario: Scenario,
        seed: int,
        clock: FakeClock,
        feedback: Feedback | None,
    ) -> None:
        self.decider, self.clock, self.router = decider, clock, scenario.router
        self.start = clock.now()
        self.models = SimulatedModels()
        self.unsettled = 0  # requests answered since the last drain: an upper bound on shadows in flight
        self.metrics = RecordingMetrics()
        self.core = RouterCore(self.models.calls(), self.router, self.models.now, random.Random(seed), self.metrics)
        self.stream = RequestStream(profile, scenario.requests_per_s, seed)
        self.student_observations = 0
        self.feedback = feedback if profile.labels is not None else None
        self.truth = TruthLabels(profile.labels, seed) if profile.labels is not None else None
        self.due: list[tuple[float, int, str, int]] = []  # (when, order, request id, label)
        if self.feedback is not None:
            self.core.set_receipt_key(RECEIPT_KEY)

    async def run(self, finished: Callable[[], bool], max_seconds: float) -> Run:
        start, end, router = self.start, self.start + max_seconds, self.router
        flushes, next_tick = 1, self.decider.next_tick_at()
        self.core.adopt(self.decider.routing())
        while not finished() and self.clock.now() < end:
            flush_at = start + flushes * router.flush_interval_s
            control = min(flush_at, next_tick, end)
            while start + self.stream.next_at() < control:
                await self._request(self.stream.pop())
            await self._settle()
            self._advance_to(control)
            if control == flush_at:
                self._flush()
                self._send_labels()
                flushes, next_tick = flushes + 1, self.decider.next_tick_at()
            if self.clock.now() >= next_tick:
                self.decider.tick()
                next_tick = self.decider.next_tick_at()
            self.core.adopt(self.decider.routing())
        return self._measured()

    def _advance_to(self, at: float) -> None:
        self.clock.advance(max(0.0, at - self.clock.now()))

    async def _request(self, draw: Draw) -> None:
        arrived = self.start + draw.at
        self._advance_to(arrived)
        texts = self.models.admit(draw, arrived)
        try:
            answered = await self.core.answer(texts, segment=draw.segment)
        except ModelCallError:  # a 503 to the client; the core has left the observations pending
            return
        await self.core.after(answered)
        if self.feedback is not None and self.truth is not None and (label := self.truth.label(draw)):
            delay, truth = label
            heapq.heappush(self.due, (arrived + delay, len(self.due), answered.request_id, truth))
        self.unsettled += 1
        if self.unsettled >= self.router.shadow_concurrency:  # never past the cap: none dropped
            await self._settle()

    async def _settle(self) -> None:
        """Let the shadows in flight finish (their observations join `pending`)."""
        await self.core.drain()
        self.models.forget()
        self.unsettled = 0

    def _flush(self) -> None:
        for batch in self.core.take_pending(self.router.flush_max_observations):
            self.student_observations += sum(o.variant is Variant.STUDENT for o in batch)
            self.decider.record(batch)

    def _send_labels(self) -> None:
        items = []
        while self.due and self.due[0][0] <= self.clock.now():
            _, _, request_id, label = heapq.heappop(self.due)
            items.append(FeedbackItem(request_id=request_id, label=LABELS[label]))
        if items and self.feedback is not None:
            self.feedback(items)

    def _measured(self) -> Run:
        m = self.metrics
        served = m.requests[(Variant.STUDENT, "ok")] + sum(m.failovers.values())  # every request sent to it
        return Run(self.clock.now() - self.start, self.student_observations, served, m.comparisons)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Simulated failures are the point: the core's log line per failed call is noise here."""
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_rollout(
    decider: DecisionMaker,
    finished: Callable[[], bool],
    profile: StudentProfile,
    scenario: Scenario,
    seed: int,
    clock: FakeClock,
    feedback: Feedback | None = None,
) -> Run:
    """Drive `decider` (built on `clock`) through one run of `profile`'s world until `finished()`
    or `scenario.max_seconds`; the request stream and the router's coin are fixed by `seed`.
    Labels (when the profile has them) go to `feedback`, signed with `RECEIPT_KEY`."""
    loop = _Loop(decider, profile, scenario, seed, clock, feedback)
    with _quiet(router_core.log):
        return asyncio.run(loop.run(finished, scenario.max_seconds))


# --- kdcanary: the real controller ----------------------------------------------------------


def _result(phase: Phase) -> Result:
    if phase in (Phase.COMPLETED, Phase.WATCHING):  # promoted (watched afterwards or not)
        return Result.COMPLETED
    return Result.ROLLED_BACK if phase is Phase.ROLLED_BACK else Result.TIMED_OUT


def simulate_kdcanary(spec: RolloutSpec, profile: StudentProfile, scenario: Scenario, seed: int) -> Outcome:
    """One rollout of `profile` under `RolloutController` with `spec`, started at once by an operator."""
    clock = FakeClock()
    start = clock.now()
    store = MemoryStateStore()
    desk = FeedbackDesk(ReceiptSigner(RECEIPT_KEY), PAIR, LABELS, store)
    controller = RolloutController(spec, store, clock, RecordingWebhookSender(), pair=PAIR, desk=desk)
    controller.start(actor="simulation", reason=f"simulated rollout, seed {seed}")

    def finished() -> bool:
        status = controller.status()
        return status is not None and status.settled

    run = run_rollout(controller, finished, profile, scenario, seed, clock, controller.feedback)
    status = controller.status()
    assert status is not None  # started above
    ended = status.last_transition_at if status.settled else None
    rolled_back = status.phase is Phase.ROLLED_BACK
    return Outcome(
        system="kdcanary",
        seed=seed,
        result=_result(status.phase),
        seconds=run.seconds if ended is None else ended - start,
        student_observations=run.student_observations,
        student_served=run.student_served,
        comparisons=run.comparisons,
        cause=next(iter(controller.snapshot().counters.rollbacks), None) if rolled_back else None,
        stage_index=status.stage_index,
        weight=status.weight,
    )


def causes(outcomes: list[Outcome]) -> dict[str, int]:
    """How many rollbacks each cause accounts for."""
    return dict(Counter(o.cause or "none" for o in outcomes if o.result is Result.ROLLED_BACK))


# --- the watch after promotion ---------------------------------------------------------------------


class WatchOutcome(BaseModel):
    """One watched student whose agreement drifts: when and after how many comparisons the
    watch caught it (None: not caught within the run, or a false alarm before the change)."""

    model_config = _STRICT

    seed: int
    change_at_s: float
    false_alarm: bool  # rolled back before the change
    compared_before_change: int
    delay_observations: int | None  # compared pairs between the change and the rollback
    delay_seconds: float | None


def simulate_watch(spec: RolloutSpec, profile: StudentProfile, scenario: Scenario, seed: int) -> WatchOutcome:
    """A student promoted to 100 % by an operator at once (the watch starts from the gates'
    thresholds either way, as a student promoted through the stages would at these agreements),
    then watched through the real controller until `profile.drift` is caught or time runs out.

    The delay counts the compared pairs the controller had received from the first control event
    at or after the change (a flush is at most 0.5 s later) to the rollback's own evidence."""
    if profile.drift is None:
        raise ValueError(f"profile {profile.name}: the watch needs a drift")
    clock = FakeClock()
    start = clock.now()
    controller = RolloutController(spec, MemoryStateStore(), clock, RecordingWebhookSender(), pair=PAIR)
    controller.start(actor="simulation", reason=f"simulated watch, seed {seed}")
    controller.promote(to_full=True, actor="simulation", reason="watched from the start")
    change_at, at_change = start + profile.drift.after_s, list[int]()

    def finished() -> bool:
        if not at_change and clock.now() >= change_at:
            at_change.append(controller.snapshot().evidence.agreement_compared)
        status = controller.status()
        return status is not None and status.phase is not Phase.WATCHING

    run_rollout(controller, finished, profile, scenario, seed, clock)
    rollback = next((e for e in reversed(controller.events(limit=1000)) if e.action == "rollback"), None)
    false_alarm = rollback is not None and rollback.at < change_at
    delay = None
    if rollback is not None and not false_alarm and at_change:
        delay = (rollback.payload["evidence"]["agreement_compared"] - at_change[0], rollback.at - change_at)
    return WatchOutcome(
        seed=seed,
        change_at_s=profile.drift.after_s,
        false_alarm=false_alarm,
        compared_before_change=at_change[0] if at_change else 0,
        delay_observations=delay[0] if delay else None,
        delay_seconds=delay[1] if delay else None,
    )
