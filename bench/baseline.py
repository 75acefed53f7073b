"""A Flagger-style canary analysis, driven through the same loop as kdcanary's controller.

`FlaggerBaseline` is a `bench.simulation.DecisionMaker`: the same `RouterCore`, simulated
models and request stream per seed serve the traffic; only the decisions differ. It follows
Flagger's scheduler (pkg/controller/scheduler.go): one iteration per `interval_s`, the first
at the start, which starts the canary at the first step weight without analysis; each later
one first rolls back if `failed_checks >= threshold`, else runs every check on the last
interval's window (agreement >= min on that window's comparisons, error rate <= max, p99 <=
limit: fixed thresholds, no error bars) and either counts a failed check (halting
advancement; failed checks are never reset) or moves one step, promoting after a passing
check at the last step. A check with no data fails, as Flagger's "no values found" does
(scheduler_metrics.go returns false). It judges the student's own observations only, as the
router records them (a verdict rides on the student's observation of a compared pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.simulation import Outcome, Result, Scenario, run_rollout
from bench.world import Fraction, StudentProfile
from rollout.clock import Clock, FakeClock
from rollout.evidence import Observation, Variant
from rollout.views import PublishedRouting

_STRICT = ConfigDict(frozen=True, extra="forbid")


class BaselineSpec(BaseModel):
    """A Flagger canary analysis: fixed interval, fixed thresholds, a failed-check threshold.

    `shadow_fractions` (one per step) are the router's comparison rates while the baseline
    runs: Flagger itself compares nothing, and its agreement check needs the comparisons.
    """

    model_config = _STRICT

    interval_s: float = Field(default=60.0, gt=0.0)
    step_weights: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)  # fractions of traffic
    threshold: int = Field(default=5, ge=1)
    min_agreement: float = Field(default=0.97, ge=0.0, le=1.0)
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p99_s: float = Field(default=0.045, gt=0.0)
    shadow_fractions: tuple[Fraction, ...] = (0.1, 0.1, 0.1, 0.1, 0.1)

    @model_validator(mode="after")
    def _one_shadow_fraction_per_step(self) -> Self:
        steps, fractions = len(self.step_weights), len(self.shadow_fractions)
        if fractions != steps:
            raise ValueError(f"need {steps} shadow_fractions (one per step), got {fractions}")
        return self


@dataclass
class _Window:
    """One analysis interval's student evidence (Flagger queries over the last interval)."""

    requests: int = 0
    errors: int = 0
    compared: int = 0
    agreed: int = 0
    latencies: list[float] = field(default_factory=list)


class FlaggerBaseline:
    """Flagger's canary analysis as a `DecisionMaker` (module docstring): routers `record`
    into the current window, `tick()` runs one iteration, `next_tick_at()` is one interval on."""

    def __init__(self, spec: BaselineSpec, clock: Clock) -> None:
        self.spec, self._clock = spec, clock
        self.step = -1  # index into step_weights; -1 before the first iteration
        self.failed_checks = 0
        self.result: Result | None = None
        self.ended_at: float | None = None
        self.last_failures: tuple[str, ...] = ()
        self._window = _Window()
        self._next_at = clock.now()  # the first iteration is due at once
        self._iterations = 0

    @property
    def weight(self) -> float:
        if self.result is Result.COMPLETED:
            return 1.0
        if self.result is Result.ROLLED_BACK or self.step < 0:
            return 0.0
        return self.spec.step_weights[self.step]

    @property
    def shadow_fraction(self) -> float:
        return 0.0 if self.result is not None or self.step < 0 else self.spec.shadow_fractions[self.step]

    def routing(self) -> PublishedRouting:
        """Weight and shadow fraction for routers; the version counts iterations (never falls)."""
        return PublishedRouting(weight=self.weight, shadow_fraction=self.shadow_fraction, version=self._iterations)

    def record(self, observations: Sequence[Observation]) -> None:
        """Add a router batch's student observations and comparisons to the current window."""
        window = self._window
        for obs in observations:
            if obs.variant is not Variant.STUDENT:
                continue
            window.requests += 1
            window.errors += obs.error
            window.latencies.append(obs.latency_s)
            if obs.agreed is not None:
                window.compared += 1
                window.agreed += obs.agreed

    def next_tick_at(self) -> float:
        return self._next_at

    def tick(self) -> None:
        """One scheduler iteration now; the next is one interval later."""
        now = self._clock.now()
        self._next_at = now + self.spec.interval_s
        self._iterations += 1
        self._iterate(now)

    def failures(self) -> tuple[str, ...]:
        """The checks the current window fails; a check without data fails ("no values found")."""
        spec, window = self.spec, self._window
        failed = []
        if window.compared == 0 or window.agreed / window.compared < spec.min_agreement:
            failed.append("agreement" if window.compared else "agreement:no_data")
        if window.requests == 0 or window.errors / window.requests > spec.max_error_rate:
            failed.append("errors" if window.requests else "errors:no_data")
        latencies = window.latencies
        if not latencies or float(np.percentile(latencies, 99)) > spec.max_p99_s:
            failed.append("latency" if latencies else "latency:no_data")
        return tuple(failed)

    def _iterate(self, now: float) -> None:
        """Flagger's order: threshold, start, analysis, advance."""
        if self.result is not None:
            return
        if self.failed_checks >= self.spec.threshold:
            self.result, self.ended_at = Result.ROLLED_BACK, now
            return
        failed = () if self.step < 0 else self.failures()
        self._window = _Window()
        if failed:
            self.failed_checks += 1
            self.last_failures = failed
        elif self.step < len(self.spec.step_weights) - 1:
            self.step += 1
        else:
            self.result, self.ended_at = Result.COMPLETED, now


def simulate_baseline(spec: BaselineSpec, profile: StudentProfile, scenario: Scenario, seed: int) -> Outcome:
    """One rollout of `profile` under the Flagger-style baseline, on the world `seed` fixes."""
    clock = FakeClock()
    start = clock.now()
    flagger = FlaggerBaseline(spec, clock)
    run = run_rollout(flagger, lambda: flagger.result is not None, profile, scenario, seed, clock)
    return Outcome(
        system="baseline",
        seed=seed,
        result=flagger.result or Result.TIMED_OUT,
        seconds=run.seconds if flagger.ended_at is None else flagger.ended_at - start,
        student_observations=run.student_observations,
        student_served=run.student_served,
        comparisons=run.comparisons,
        cause=",".join(flagger.last_failures) if flagger.result is Result.ROLLED_BACK else None,
        stage_index=max(flagger.step, 0),
        weight=flagger.weight,
    )
