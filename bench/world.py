"""The simulated world of bench/simulation.py: student truths, the request stream, the models.

Only the world is simulated here; the router's core and the controller that serve it are the
shipped ones. A `StudentProfile` is the truth a student is drawn from. `RequestStream` is a
Poisson process of requests, each with its truth (does the student fail on it, does the
teacher, do their answers agree, how long each takes, is it in the student's weak slice, which
the teacher labels as a class of its own), drawn from a seeded numpy Generator
independently of any routing, so every system run on one seed sees the same requests.
`TruthLabels` draws the labels a product's backend sends back later (`LabelProfile`) from a
Generator of its own, so profiles without labels see exactly the requests they saw before.
`SimulatedModels` are the two model calls the core is given: they answer a request as its
truth says, and they provide the core's clock, which reports each call's drawn latency
(bench/simulation.py explains how simulated time and latency fit together).
"""

from __future__ import annotations

import math
from typing import Annotated, NamedTuple, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.evidence import Variant
from serving.answer import ModelAnswer
from serving.router_core import ModelCall

_STRICT = ConfigDict(frozen=True, extra="forbid")
Z99 = 2.3263478740408408
"""The standard normal 0.99 quantile: a lognormal's p99 is exp(mu + Z99 * sigma)."""

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Floats = npt.NDArray[np.float64]


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
    """A fraction of the traffic (one kind of input) on which the student does worse: a class of
    its own (the teacher labels it "positive"), or, with `segment`, requests that name that
    segment (the teacher's labels on it are as everywhere else)."""

    model_config = _STRICT

    fraction: float = Field(gt=0.0, le=1.0)
    agreement: float = Field(ge=0.0, le=1.0)
    error_rate: float = Field(ge=0.0, le=1.0)
    segment: str | None = None


class LabelProfile(BaseModel):
    """True labels that come back for `fraction` of requests, an exponential `delay_mean_s` after
    the answer. Where the models agree both are right with probability `both_right`; where they
    disagree (two labels: exactly one is right) the student is with `student_right_when_disagree`."""

    model_config = _STRICT

    fraction: Fraction = 0.3
    delay_mean_s: float = Field(default=60.0, ge=0.0)
    both_right: Fraction = 0.9
    student_right_when_disagree: Fraction = 0.5


class Drift(BaseModel):
    """The student changes: requests arriving `after_s` seconds or later agree at `agreement`
    (the world drifted under it, or a bad model was pushed in its place)."""

    model_config = _STRICT

    after_s: float = Field(ge=0.0)
    agreement: float = Field(ge=0.0, le=1.0)


class StudentProfile(BaseModel):
    """The truth a simulated student is drawn from: agreement, error rates, latencies, slice,
    labels, and a drift later on."""

    model_config = _STRICT

    name: str
    agreement: float = Field(ge=0.0, le=1.0)
    error_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    teacher_error_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    student_latency: LatencyProfile
    teacher_latency: LatencyProfile
    slice: TrafficSlice | None = None
    labels: LabelProfile | None = None
    drift: Drift | None = None


# --- requests and the two models ---------------------------------------------------------------


class Draw(NamedTuple):
    """One request's truth: when it arrives (seconds after the start) and how each model does."""

    at: float
    student_fails: bool
    teacher_fails: bool
    agrees: bool
    student_latency_s: float
    teacher_latency_s: float
    in_slice: bool  # the student's weak slice
    segment: str | None  # the segment the request names: the slice's, when the slice is a segment

    @property
    def teacher_label(self) -> int:
        """The teacher's answer: 1 ("positive") on a slice that is a class of its own, else 0."""
        return int(self.in_slice and self.segment is None)


class RequestStream:
    """A Poisson process of requests and their truths, fixed by the seed alone.

    Draws come in blocks (exponential gaps, four uniforms, two standard normals per request)
    whatever the profile, so two profiles on one seed differ only where their truths differ.
    """

    BLOCK = 2048

    def __init__(self, profile: StudentProfile, requests_per_s: float, seed: int) -> None:
        self._profile, self._rate = profile, requests_per_s
        self._rng = np.random.default_rng(seed)
        self._draws: list[Draw] = []
        self._next, self._last = 0, 0.0

    def next_at(self) -> float:
        """When the next request arrives (seconds after the start); inf without traffic."""
        if self._rate <= 0.0:
            return math.inf
        if self._next == len(self._draws):
            self._refill()
        return self._draws[self._next].at

    def pop(self) -> Draw:
        """The next request (there is one unless `next_at` is inf)."""
        if self._next == len(self._draws):
            self._refill()
        self._next += 1
        return self._draws[self._next - 1]

    def _refill(self) -> None:
        n, p, weak = self.BLOCK, self._profile, self._profile.slice
        at = self._last + np.cumsum(self._rng.exponential(1.0 / self._rate, n))
        u, z = self._rng.random((n, 4)), self._rng.standard_normal((n, 2))
        in_slice = u[:, 0] < (weak.fraction if weak is not None else 0.0)
        error_rate = np.where(in_slice, weak.error_rate if weak else 0.0, p.error_rate)
        agreement = np.where(in_slice, weak.agreement if weak else 0.0, p.agreement)
        if p.drift is not None:
            agreement = np.where(at >= p.drift.after_s, p.drift.agreement, agreement)
        columns = (
            at,
            u[:, 1] < error_rate,
            u[:, 2] < p.teacher_error_rate,
            u[:, 3] < agreement,
            p.student_latency.sample(z[:, 0]),
            p.teacher_latency.sample(z[:, 1]),
            in_slice,
        )
        segment = weak.segment if weak is not None else None
        rows = zip(*(c.tolist() for c in columns), strict=True)
        self._draws = [Draw._make([*row, segment if row[-1] else None]) for row in rows]
        self._next, self._last = 0, float(at[-1])


class TruthLabels:
    """The label of each answered request, if one comes back, and when (seconds after it)."""

    def __init__(self, profile: LabelProfile, seed: int) -> None:
        self._profile = profile
        self._rng = np.random.default_rng([seed, 1])  # not the request stream's Generator

    def label(self, draw: Draw) -> tuple[float, int] | None:
        """(delay, label id) for `draw`'s request, or None when no label comes back for it."""
        p = self._profile
        labelled, right, delay = self._rng.random(), self._rng.random(), self._rng.exponential(p.delay_mean_s or 1.0)
        if labelled >= p.fraction:
            return None
        teacher = draw.teacher_label
        if draw.agrees:
            label = teacher if right < p.both_right else 1 - teacher
        else:
            label = 1 - teacher if right < p.student_right_when_disagree else teacher
        return (delay if p.delay_mean_s else 0.0), label


class SimulatedModelError(RuntimeError):
    """A simulated model call that failed (the core sees any Exception as a failed call)."""


LABELS = ("negative", "positive")
_ROWS = {  # one input's probabilities for each top-1 label
    0: np.array([[0.9, 0.1]], dtype=np.float32),  # "negative": the teacher's answer off a class slice
    1: np.array([[0.2, 0.8]], dtype=np.float32),  # "positive": the teacher's answer on it
}


class SimulatedModels:
    """Teacher and student as functions of their input: `admit` gives a request its input (one
    text, so a request is one comparison) and its truth, which both models answer by.

    `now` is the core's clock: the current request's arrival plus the simulated seconds its
    model calls have spent (module docstring). A call adds its latency before it returns and
    never suspends, so the core's two reads around it differ by exactly that latency, even for
    a shadow that runs after later requests were admitted.
    """

    def __init__(self) -> None:
        self._truths: dict[str, Draw] = {}
        self._arrived = self._spent = 0.0

    def admit(self, draw: Draw, arrived: float) -> list[str]:
        """A request arrives at `arrived` (world time): its input, answered as `draw` says."""
        text = str(len(self._truths))
        self._truths[text] = draw
        self._arrived, self._spent = arrived, 0.0
        return [text]

    def forget(self) -> None:
        """Drop the truths of requests that are over (no call of theirs is in flight)."""
        self._truths.clear()

    def now(self) -> float:
        return self._arrived + self._spent

    def calls(self) -> dict[Variant, ModelCall]:
        return {Variant.TEACHER: self._teacher, Variant.STUDENT: self._student}

    async def _teacher(self, texts: list[str]) -> ModelAnswer:
        draw = self._truths[texts[0]]
        return self._answer(Variant.TEACHER, draw.teacher_latency_s, draw.teacher_fails, _ROWS[draw.teacher_label])

    async def _student(self, texts: list[str]) -> ModelAnswer:
        draw = self._truths[texts[0]]
        row = _ROWS[draw.teacher_label == draw.agrees]  # the teacher's label when it agrees, the other when not
        return self._answer(Variant.STUDENT, draw.student_latency_s, draw.student_fails, row)

    def _answer(self, variant: Variant, latency_s: float, fails: bool, row: np.ndarray) -> ModelAnswer:
        self._spent += latency_s  # a failure takes its time too
        if fails:
            raise SimulatedModelError(f"simulated {variant.value} failure")
        return ModelAnswer(f"simulated-{variant.value}", variant, LABELS, row, latency_s, 0.0)
