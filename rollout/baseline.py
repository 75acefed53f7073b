"""A Flagger-style canary analysis on the same simulated streams as kdcanary's policy.

The baseline (`FlaggerBaseline`) follows Flagger's scheduler (pkg/controller/scheduler.go):
one iteration per `interval_s`; the first starts the canary at the first step weight without
analysis; each later one first rolls back if `failed_checks >= threshold`, else runs every
check on the last interval's window (agreement >= min on that window's comparisons, error
rate <= max, p99 <= limit: fixed thresholds, no error bars) and either counts a failed check
(halting advancement; failed checks are never reset) or moves one step, promoting after a
passing check at the last step. A check with no data fails, as Flagger's "no values found"
does (scheduler_metrics.go returns false). It judges the student's own observations only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.simulate import (
    Floats,
    Fraction,
    Outcome,
    RequestStream,
    Result,
    Routed,
    Scenario,
    StudentProfile,
    Tally,
    route,
)

_STRICT = ConfigDict(frozen=True, extra="forbid")


class BaselineSpec(BaseModel):
    """A Flagger canary analysis: fixed interval, fixed thresholds, a failed-check threshold.

    `shadow_fractions` (one per step) are the router's comparison rates while the baseline
    runs: Flagger itself compares nothing, and its agreement check needs the comparisons.
    """

    model_config = _STRICT

    interval_s: float = Field(default=60.0, gt=0.0)
    step_weights: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
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
    latencies: list[Floats] = field(default_factory=list)


class FlaggerBaseline:
    """Flagger's canary analysis as a pure state machine (module docstring): `observe` the
    router's records between iterations, call `iterate(now)` once per `interval_s`."""

    def __init__(self, spec: BaselineSpec) -> None:
        self.spec = spec
        self.step = -1  # index into step_weights; -1 before the first iteration
        self.failed_checks = 0
        self.result: Result | None = None
        self.ended_at: float | None = None
        self.last_failures: tuple[str, ...] = ()
        self._window = _Window()

    @property
    def weight_percent(self) -> float:
        if self.result is Result.COMPLETED:
            return 100.0
        if self.result is Result.ROLLED_BACK or self.step < 0:
            return 0.0
        return self.spec.step_weights[self.step]

    @property
    def shadow_fraction(self) -> float:
        return 0.0 if self.result is not None or self.step < 0 else self.spec.shadow_fractions[self.step]

    def observe(self, routed: Routed) -> None:
        """Add one flush's student observations and comparisons to the current window."""
        window, student = self._window, routed.student
        window.requests += int(student.sum())
        window.errors += int(routed.student_error.sum())
        window.compared += int((routed.agreed >= 0).sum())
        window.agreed += int((routed.agreed == 1).sum())
        window.latencies.append(routed.student_latency[student])

    def failures(self) -> tuple[str, ...]:
        """The checks the current window fails; a check without data fails ("no values found")."""
        spec, window = self.spec, self._window
        failed = []
        if window.compared == 0 or window.agreed / window.compared < spec.min_agreement:
            failed.append("agreement" if window.compared else "agreement:no_data")
        if window.requests == 0 or window.errors / window.requests > spec.max_error_rate:
            failed.append("errors" if window.requests else "errors:no_data")
        latencies = np.concatenate(window.latencies) if window.latencies else np.empty(0)
        if latencies.size == 0 or float(np.percentile(latencies, 99)) > spec.max_p99_s:
            failed.append("latency" if latencies.size else "latency:no_data")
        return tuple(failed)

    def iterate(self, now: float) -> None:
        """One scheduler iteration (Flagger's order: threshold, start, analysis, advance)."""
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
    """One rollout of `profile` under the Flagger-style baseline, on the stream `seed` fixes.

    The weight only changes at iterations, so each interval's flushes are routed in one go.
    """
    dt = scenario.flush_interval_s
    stream, flagger = RequestStream(scenario.requests_per_s, dt, seed), FlaggerBaseline(spec)
    per_interval = max(1, round(spec.interval_s / dt))
    flagger.iterate(0.0)  # Flagger's first iteration starts the canary without analysis
    now, intervals, tally = 0.0, 0, Tally()
    while flagger.result is None and now < scenario.max_seconds:
        draws = stream.take(per_interval)
        routed = route(profile, draws, flagger.weight_percent / 100.0, flagger.shadow_fraction)
        flagger.observe(routed)
        tally.add(routed)
        intervals += 1
        now = intervals * per_interval * dt
        flagger.iterate(now)
    return Outcome(
        system="baseline",
        seed=seed,
        result=flagger.result or Result.TIMED_OUT,
        seconds=flagger.ended_at if flagger.ended_at is not None else now,
        student_observations=tally.student_observations,
        student_served=tally.student_served,
        comparisons=tally.comparisons,
        cause=",".join(flagger.last_failures) if flagger.result is Result.ROLLED_BACK else None,
        stage_index=max(flagger.step, 0),
        weight_percent=flagger.weight_percent,
    )
