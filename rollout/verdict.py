"""A gate's outcome: three verdicts, and one result record with the numbers behind it.

A verdict is a claim the confidence sequence supports at the gate's alpha: PASS when the whole
interval lies on the good side of the threshold, FAIL when the whole interval lies on the bad
side, INCONCLUSIVE while it straddles (and always without data).

A result is `binding` unless the spec's combination rule set it aside (accuracy deciding in
place of agreement, see `spec.AccuracyGate`): such a result is shown, and moves nothing.
"""

from __future__ import annotations

import math
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Verdict(StrEnum):
    """A gate's outcome."""

    PASS = "pass"  # the bound clears the threshold: this gate allows advancing
    FAIL = "fail"  # the bound is on the wrong side of the threshold: roll back
    INCONCLUSIVE = "inconclusive"  # not enough evidence either way (always so without data)


class GateResult(BaseModel):
    """One gate's verdict and the numbers behind it; bounds are None where unbounded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    verdict: Verdict
    n: int
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    threshold: float
    message: str
    binding: bool = True  # False: shown, but the spec's combination rule sets it aside

    @property
    def blocks(self) -> bool:
        """An inconclusive binding result: the stage waits for it."""
        return self.binding and self.verdict is Verdict.INCONCLUSIVE

    @property
    def fails(self) -> bool:
        """A failing binding result: the rollout rolls back."""
        return self.binding and self.verdict is Verdict.FAIL


def finite(value: float | None) -> float | None:
    """None for an unbounded (infinite) bound: results carry None where unbounded."""
    return None if value is None or math.isinf(value) else value


def judge(lower: float, upper: float, threshold: float, higher_is_better: bool) -> Verdict:
    """The verdict of a confidence interval against a threshold."""
    good, bad = (lower >= threshold, upper < threshold)
    if not higher_is_better:
        good, bad = (upper <= threshold, lower > threshold)
    if good:
        return Verdict.PASS
    return Verdict.FAIL if bad else Verdict.INCONCLUSIVE
