"""Simulated rollouts: synthetic student streams through the real policy and a Flagger-style baseline.

Pure Python and numpy (no Ray, no threads, no sleeping, no I/O): a run is a function of
(profile, scenario, spec, seed), so any figure in bench/results/rollout.json can be replayed.

Traffic. Requests arrive as a Poisson process at `Scenario.requests_per_s`. Each request
carries its own draws (which model the weighted coin picks, whether the request falls in the
student's failing slice, whether each model errors, whether it is shadowed, whether the
student agrees, both models' latencies) from a seeded numpy Generator, independent of the
routing. So the kdcanary run and the baseline run with the same seed see the same requests
(common random numbers); only the weight and shadow fraction that route them differ.

Router model, as serving/router.py forms observations (each request gives at most one
student and one teacher observation):

- the weighted coin picks the model; a student failure fails over to the teacher (a student
  observation with error=True, then the teacher's), and a failed-over request is not shadowed;
- a request whose primary answer succeeded is shadowed with probability `shadow_fraction`:
  the other model answers too, and when both answered the student's observation carries
  `agreed`; a failed shadow is an error observation of that model with no verdict;
- a request the teacher fails (as primary or after a failover) answers 503 and the router
  records nothing for it: `_answer` raises before its observations reach `_pending`. So
  teacher errors reach the evidence only through failed teacher shadows, which biases the
  error gate's teacher rate low (a router behaviour mirrored here, not corrected).

Granularity. Time advances in steps of `Scenario.flush_interval_s`, 1 s by default: one
`add_observations` batch per controller tick (routers flush every 0.5 s; two flushes merged
into one batch change nothing a tick sees, only when within the second the trip wire can
fire, and they halve the cost that makes 1000+ runs affordable). Each batch is stamped with
its flush time (student observations in request order, then the teacher's: only the student
order matters, for the trip wire's error streak) and followed by the controller's `urgent`
check, which ticks at once when it fires. The regular tick (`decide` -> `apply` ->
`rollover`) runs at the first flush at or after `min(next_check_at, last tick +
tick_interval_s)`, as `RolloutController.next_tick_at` schedules it. A new routing takes
effect from the next flush (routers poll every 0.25 s), and a rollout starts as
`RolloutController.start` starts one: `RolloutStatus(epoch=0)`, `Evidence(epoch=0)`, and an
immediate tick because pending is urgent.

The Flagger-style baseline that runs on the same streams is in rollout/baseline.py.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from rollout.evidence import Evidence, Observation, Variant, add_observations, rollover
from rollout.policy import Decision, apply, decide, routing, urgent
from rollout.spec import RolloutSpec
from rollout.status import Phase, RolloutStatus
from rollout.views import rollback_cause

_STRICT = ConfigDict(frozen=True, extra="forbid")
Z99 = 2.3263478740408408
"""The standard normal 0.99 quantile: a lognormal's p99 is exp(mu + Z99 * sigma)."""

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class LatencyProfile(BaseModel):
    """A lognormal latency fixed by its median and p99 (sigma = ln(p99 / p50) / z_0.99)."""

    model_config = _STRICT

    p50_s: float = Field(gt=0.0)
    p99_s: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _p99_above_p50(self) -> Self:
        if self.p99_s < self.p50_s:
            raise ValueError(f"p99_s {self.p99_s} is below p50_s {self.p50_s}")
        return self

    def sample(self, normals: Floats) -> Floats:
        """Latencies for standard normal draws (one per request, so runs share them)."""
        sigma = math.log(self.p99_s / self.p50_s) / Z99
        return np.exp(math.log(self.p50_s) + sigma * normals)


class TrafficSlice(BaseModel):
    """A fraction of the traffic (one kind of input) on which the student does worse."""

    model_config = _STRICT

    fraction: float = Field(gt=0.0, le=1.0)
    agreement: float = Field(ge=0.0, le=1.0)
    error_rate: float = Field(ge=0.0, le=1.0)


class StudentProfile(BaseModel):
    """The truth a simulated student is drawn from: agreement, error rates, latencies, slice."""

    model_config = _STRICT

    name: str
    agreement: float = Field(ge=0.0, le=1.0)
    error_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    teacher_error_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    student_latency: LatencyProfile
    teacher_latency: LatencyProfile
    slice: TrafficSlice | None = None


class Scenario(BaseModel):
    """The traffic a rollout sees and how long the simulation may run."""

    model_config = _STRICT

    requests_per_s: float = Field(default=50.0, ge=0.0)
    max_seconds: float = Field(default=1800.0, gt=0.0)
    flush_interval_s: float = Field(default=1.0, gt=0.0)


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
    weight_percent: float


# --- traffic and router ---------------------------------------------------------------------

_ROUTE, _SLICE, _STUDENT_FAILS, _TEACHER_FAILS, _SHADOW, _AGREE, _Z_STUDENT, _Z_TEACHER = range(8)


class RequestStream:
    """Per-request draws, flush by flush, fixed by the seed and independent of the routing.

    Draws come in blocks of `BLOCK_FLUSHES` flushes (Poisson counts, then six uniforms and two
    standard normals per request), so however a consumer groups the flushes (the baseline
    takes a whole analysis interval at once) it sees the same requests.
    """

    BLOCK_FLUSHES = 64

    def __init__(self, requests_per_s: float, flush_interval_s: float, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._mean = requests_per_s * flush_interval_s
        self._draws: Floats = np.empty((0, 8))
        self._ends: list[int] = []
        self._next = 0

    def _refill(self) -> None:
        counts = self._rng.poisson(self._mean, self.BLOCK_FLUSHES)
        total = int(counts.sum())
        self._draws = np.hstack([self._rng.random((total, 6)), self._rng.standard_normal((total, 2))])
        self._ends, self._next = np.cumsum(counts).tolist(), 0

    def take(self, flushes: int = 1) -> Floats:
        """The next `flushes` flushes' requests as one (n, 8) array, in arrival order."""
        parts = []
        for _ in range(flushes):
            if self._next == len(self._ends):
                self._refill()
            start = self._ends[self._next - 1] if self._next else 0
            parts.append(self._draws[start : self._ends[self._next]])
            self._next += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True)
class Routed:
    """One flush's observations as arrays: per request, a student and a teacher slot.

    `agreed` is -1 where no pair was compared, else 0 or 1; `served` marks the requests the
    weighted coin sent to the student (users exposed to it, failovers included).
    """

    served: Bools
    student: Bools
    student_error: Bools
    student_latency: Floats
    agreed: npt.NDArray[np.int8]
    teacher: Bools
    teacher_error: Bools
    teacher_latency: Floats


def route(profile: StudentProfile, draws: Floats, weight: float, shadow: float) -> Routed:
    """What the router records for these requests at this weight and shadow fraction."""
    weak = profile.slice
    in_slice = draws[:, _SLICE] < (weak.fraction if weak is not None else 0.0)
    error_rate = np.where(in_slice, weak.error_rate if weak else 0.0, profile.error_rate)
    agreement = np.where(in_slice, weak.agreement if weak else 0.0, profile.agreement)
    student_fails = draws[:, _STUDENT_FAILS] < error_rate
    teacher_fails = draws[:, _TEACHER_FAILS] < profile.teacher_error_rate
    to_student = draws[:, _ROUTE] < weight
    primary_ok = np.where(to_student, ~student_fails, ~teacher_fails)
    shadowed = primary_ok & (draws[:, _SHADOW] < shadow)
    failover = to_student & student_fails & ~teacher_fails
    student = (to_student & ~(student_fails & teacher_fails)) | (~to_student & shadowed)
    teacher = (~to_student & ~teacher_fails) | failover | (to_student & shadowed)
    paired = shadowed & ~student_fails & ~teacher_fails
    agreed = np.where(paired, draws[:, _AGREE] < agreement, -1).astype(np.int8)
    return Routed(
        served=to_student & student,
        student=student,
        student_error=student & student_fails,
        student_latency=profile.student_latency.sample(draws[:, _Z_STUDENT]),
        agreed=agreed,
        teacher=teacher,
        teacher_error=teacher & teacher_fails,
        teacher_latency=profile.teacher_latency.sample(draws[:, _Z_TEACHER]),
    )


_BATCH = TypeAdapter(list[Observation])


def observations(routed: Routed) -> list[Observation]:
    """The router's `Observation`s for one flush: students in request order, then teachers.

    Validated as one list (pydantic-core builds the models), a third cheaper than one
    constructor call per observation.
    """
    pick = routed.student
    verdicts = [None if v < 0 else v == 1 for v in routed.agreed[pick].tolist()]
    rows: list[dict[str, object]] = [
        {"variant": Variant.STUDENT, "latency_s": lat, "error": err, "agreed": agreed}
        for lat, err, agreed in zip(
            routed.student_latency[pick].tolist(), routed.student_error[pick].tolist(), verdicts, strict=True
        )
    ]
    pick = routed.teacher
    rows += [
        {"variant": Variant.TEACHER, "latency_s": lat, "error": err}
        for lat, err in zip(routed.teacher_latency[pick].tolist(), routed.teacher_error[pick].tolist(), strict=True)
    ]
    return _BATCH.validate_python(rows)


@dataclass
class Tally:
    """Running totals over a whole rollout (the evidence itself restarts per stage)."""

    student_observations: int = 0
    student_served: int = 0
    comparisons: int = 0

    def add(self, routed: Routed) -> None:
        self.student_observations += int(routed.student.sum())
        self.student_served += int(routed.served.sum())
        self.comparisons += int((routed.agreed >= 0).sum())


# --- kdcanary: the real policy ----------------------------------------------------------------


@dataclass
class _Controller:
    """What `RolloutController` keeps in memory around the pure policy, without the store."""

    spec: RolloutSpec
    status: RolloutStatus = field(default_factory=lambda: RolloutStatus(epoch=0))
    evidence: Evidence = field(default_factory=lambda: Evidence(epoch=0))
    next_tick: float = 0.0
    last: Decision | None = None

    def record(self, batch: list[Observation], now: float) -> None:
        """`RolloutController.record`: fold the batch in, tick at once when `urgent` says so."""
        if not batch:
            return
        self.evidence = add_observations(self.evidence, batch, now)
        if urgent(self.spec, self.status, self.evidence, now):
            self.tick(now)

    def tick(self, now: float) -> None:
        """decide -> apply -> rollover, and the next tick time `next_tick_at` would give."""
        self.last = decide(self.spec, self.status, self.evidence, now)
        self.status = apply(self.status, self.last, now)
        self.evidence = rollover(self.evidence, self.status.epoch)
        regular = now + self.spec.tick_interval_s
        wanted = self.last.next_check_at
        self.next_tick = regular if wanted is None else min(wanted, regular)


def _result(phase: Phase) -> Result:
    if phase is Phase.COMPLETED:
        return Result.COMPLETED
    return Result.ROLLED_BACK if phase is Phase.ROLLED_BACK else Result.TIMED_OUT


def simulate_kdcanary(spec: RolloutSpec, profile: StudentProfile, scenario: Scenario, seed: int) -> Outcome:
    """One rollout of `profile` under the real policy with `spec`, on the stream `seed` fixes."""
    dt = scenario.flush_interval_s
    stream, ctl, tally = RequestStream(scenario.requests_per_s, dt, seed), _Controller(spec), Tally()
    ctl.tick(0.0)  # start: pending is urgent, so the controller ticks inside the start call
    now, flushes = 0.0, 0
    while not ctl.status.terminal and now < scenario.max_seconds:
        published = routing(spec, ctl.status)
        routed = route(profile, stream.take(), published.weight_percent / 100.0, published.shadow_fraction)
        tally.add(routed)
        flushes += 1
        now = flushes * dt
        ctl.record(observations(routed), now)
        if not ctl.status.terminal and now >= ctl.next_tick:
            ctl.tick(now)
    return _kdcanary_outcome(ctl, tally, seed, now)


def _kdcanary_outcome(ctl: _Controller, tally: Tally, seed: int, now: float) -> Outcome:
    status, last = ctl.status, ctl.last
    ended = status.last_transition_at if status.terminal else None
    return Outcome(
        system="kdcanary",
        seed=seed,
        result=_result(status.phase),
        seconds=ended if ended is not None else now,
        student_observations=tally.student_observations,
        student_served=tally.student_served,
        comparisons=tally.comparisons,
        cause=rollback_cause(last) if last is not None and status.phase is Phase.ROLLED_BACK else None,
        stage_index=status.stage_index,
        weight_percent=status.weight_percent,
    )


def causes(outcomes: list[Outcome]) -> dict[str, int]:
    """How many rollbacks each cause accounts for."""
    return dict(Counter(o.cause or "none" for o in outcomes if o.result is Result.ROLLED_BACK))
