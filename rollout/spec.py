"""The rollout spec: stages as data, and the gates that must pass before each step.

It arrives as the Ray Serve deployment's `user_config` (a mapping) or a YAML file, so every
model forbids unknown keys: a typo ("treshold") is an error naming the field, not a silently
ignored default. A gate set to null is disabled.

Each gate's `alpha` bounds its false verdicts over every look: for agreement, the per-class
and segment guards and accuracy, whose evidence pools across stages, that covers the whole
rollout. Errors and latency look twice (evidence.py says why): at each stage's own evidence,
whose alpha holds per stage, and, with `pool_stages`, at the pooled evidence, whose alpha covers
the rollout; a rollout through s stages has at most (s + 1) x alpha chance of a false rollback
from each. Gates add up the same way: the chance of any false rollback is at most the sum of
those budgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from rollout.errors import SpecError
from rollout.evidence import RECENT_RETENTION_S

_STRICT = ConfigDict(frozen=True, extra="forbid")


class Stage(BaseModel):
    """One step: the student's share of live traffic and what must hold before leaving it.

    `shadow_fraction` is the fraction of requests the router also sends to the other model
    to compare answers (agreement evidence) and, at 100 %, to keep teacher evidence flowing.
    """

    model_config = _STRICT

    weight: float = Field(ge=0.0, le=1.0, description="the student's share of live traffic, 0..1")
    min_requests: int = Field(default=1000, ge=0)
    min_dwell_s: float = Field(default=300.0, ge=0.0)
    shadow_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    max_duration_s: float | None = Field(
        default=None, gt=0.0, description="the stage's deadline while inconclusive (None: the spec's)"
    )
    confirm: bool = Field(default=False, description="entering this stage waits for an operator's confirm")

    @model_validator(mode="before")
    @classmethod
    def _weight_is_a_fraction(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "weight_percent" in data:
            raise ValueError("weight_percent is now weight, a fraction 0..1 (5 % is weight: 0.05)")
        return data


def default_stages() -> list[Stage]:
    """0 (shadow) -> 5 -> 10 -> 25 -> 50 -> 100 %, heavier stages asking for more evidence."""
    return [
        Stage(weight=0.0, min_requests=1000, min_dwell_s=300, shadow_fraction=0.25),
        Stage(weight=0.05, min_requests=1000, min_dwell_s=300, shadow_fraction=0.1),
        Stage(weight=0.1, min_requests=1000, min_dwell_s=300, shadow_fraction=0.1),
        Stage(weight=0.25, min_requests=2000, min_dwell_s=600, shadow_fraction=0.1),
        Stage(weight=0.5, min_requests=2000, min_dwell_s=600, shadow_fraction=0.1),
        Stage(weight=1.0, min_requests=2000, min_dwell_s=600, shadow_fraction=0.05),
    ]


class AgreementGate(BaseModel):
    """Pass when agreement's lower bound reaches `threshold`; fail when its upper bound is below."""

    model_config = _STRICT

    threshold: float = Field(default=0.97, gt=0.0, lt=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)


class ClassAgreementGuard(BaseModel):
    """Agreement conditioned on the teacher's label, each class against `threshold`: a regression
    in one class rolls back even when the average passes. A guard: it fails, or stays out of the
    way; the overall agreement gate is what must pass to advance.

    Each class gets alpha / max(`classes`, classes seen): declare how many labels the model has."""

    model_config = _STRICT

    threshold: float = Field(default=0.9, gt=0.0, lt=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    classes: int = Field(default=2, ge=1, le=1000, description="the model's number of labels")


OTHER_SEGMENT = "other"
MAX_SEGMENTS = 48
SegmentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class SegmentGuard(BaseModel):
    """Agreement, and accuracy once labels arrive, per declared segment of the traffic (a request
    names its segment; anything undeclared counts as "other"). Like the class guard it fails, or
    stays out of the way: a regression in one segment rolls back while the average passes.

    Each segment's agreement runs at alpha / K and its accuracy (student minus teacher >=
    -`accuracy_margin`, paired and served, as the accuracy gate) at alpha / K too, with K = 2 x
    (declared segments + "other") when accuracy is judged, else declared + 1: a union bound.
    Segment names become a metric label, which is why they are declared and bounded."""

    model_config = _STRICT

    names: tuple[SegmentName, ...] = Field(min_length=1, max_length=MAX_SEGMENTS)
    threshold: float = Field(default=0.9, gt=0.0, lt=1.0)
    accuracy_margin: float | None = Field(default=0.01, ge=0.0, lt=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)

    @field_validator("names")
    @classmethod
    def _distinct_and_not_other(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if OTHER_SEGMENT in names:
            raise ValueError(f"'{OTHER_SEGMENT}' is where undeclared segments go; do not declare it")
        if len(set(names)) != len(names):
            raise ValueError(f"each segment once: {sorted(n for n in set(names) if names.count(n) > 1)} repeat")
        return names

    def canonical(self, segment: str | None) -> str:
        """The segment a request counts in: its own when declared, else "other"."""
        return segment if segment in self.names else OTHER_SEGMENT


class AccuracyGate(BaseModel):
    """Labels from feedback: student accuracy minus the teacher's must be >= -`margin`.

    `mode` says how accuracy and the overall agreement gate combine (the per-class guard always
    stands: an average proves nothing about a class):

    - "decides" (the default): accuracy can fail at any time; otherwise, before the first label,
      agreement guards alone. Once labels are arriving, a failing agreement gate holds the stage
      instead of rolling back (the labels will tell), and from `decides_after` labelled answers
      on, accuracy decides the answers' quality: its PASS stands in for the agreement gates (a
      student proven as accurate as the teacher is promoted even where it disagrees with it),
      and while it is inconclusive the stage holds.
    - "guards": agreement decides as it would without labels; accuracy can only fail (a veto
      for a team that accepts a margin its labels cannot prove quickly).
    - "also": accuracy is one more gate; with labels configured but none arriving, no stage
      is ever left.

    Feedback is taken for answers at most `max_label_age_s` old (older request ids are refused).
    Until then the controller keeps both answers of every shadowed request (one small row each,
    in the rollout's SQLite file); `accuracy: null` keeps none, and labels then count per
    variant only, unpaired.
    """

    model_config = _STRICT

    margin: float = Field(default=0.01, ge=0.0, lt=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    mode: Literal["decides", "guards", "also"] = "decides"
    decides_after: int = Field(default=50, ge=1)
    max_label_age_s: float = Field(default=24 * 3600.0, gt=0.0, le=30 * 24 * 3600.0)


class ErrorGate(BaseModel):
    """Student error rate minus the teacher's must stay <= `margin` (bounds on the difference)."""

    model_config = _STRICT

    margin: float = Field(default=0.01, ge=0.0, lt=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)


class LatencyGate(BaseModel):
    """Student p99 within `p99_ratio` x teacher p99, or under the absolute `p99_slo_s`.

    Either criterion passing passes the gate; it fails only when every configured criterion
    fails. Below `min_samples` student latencies the gate is inconclusive whatever the bounds.
    """

    model_config = _STRICT

    p99_ratio: float | None = Field(default=1.5, gt=0.0)
    p99_slo_s: float | None = Field(default=None, gt=0.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_samples: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _one_criterion(self) -> Self:
        if self.p99_ratio is None and self.p99_slo_s is None:
            raise ValueError("set p99_ratio, p99_slo_s or both (or set latency: null to disable)")
        return self


class CostGate(BaseModel):
    """Student cost per request at most `max_ratio` x the teacher's once both have `min_samples`."""

    model_config = _STRICT

    max_ratio: float = Field(gt=0.0)
    min_samples: int = Field(default=500, ge=1)


class FastRollback(BaseModel):
    """The trip wire for a student that fails hard: checked before any gate, on every batch.

    Trips on `max_consecutive_errors` student errors in a row, or on an error rate of at
    least `max_error_rate` over the last `window_s` seconds once `min_window_requests`
    student requests fell in that window.
    """

    model_config = _STRICT

    max_consecutive_errors: int = Field(default=20, ge=1)
    window_s: float = Field(default=10.0, gt=0.0, le=RECENT_RETENTION_S)
    max_error_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    min_window_requests: int = Field(default=20, ge=1)


class WatchSpec(BaseModel):
    """After the last stage the rollout is watched, not finished: `shadow_fraction` of requests
    are still compared with the teacher, and labels still score both (rollout/watch.py).

    A sequential change detector watches agreement (overall, per class and per segment where
    those guards are declared) against `agreement_floor` (None: the agreement gate's threshold)
    and, with labels, accuracy against the accuracy gate's margin; its average run length to a
    false alarm is at least `arl` watched events, however long the watch runs. On a detected
    change `action` says what happens: "rollback" (the default) sends all traffic back to the
    teacher, which still runs for the shadows, so the fallback is warm and costs nothing to
    take; the student no longer answers like the model that was promoted, and every request
    it serves meanwhile is served worse. "alert" records the event, fires the webhook and the
    alert, and leaves the student serving.
    """

    model_config = _STRICT

    shadow_fraction: float = Field(default=0.05, gt=0.0, le=1.0)
    agreement_floor: float | None = Field(default=None, gt=0.0, lt=1.0)
    arl: float = Field(default=100_000.0, ge=100.0)
    action: Literal["rollback", "alert"] = "rollback"


class SmokeTest(BaseModel):
    """Before stage 0 the served teacher and student answer their bundles' recorded inputs
    (rollout/smoke.py); each must answer at least 1 - `tolerance` of them as recorded, and its
    accuracy and the pair's agreement must stay within `tolerance` of the recorded ones.
    `inputs` names a labelled CSV or JSONL (`text` and `label` columns) to send instead, read
    where the controller runs; each bundle as registered answers it beside the served model."""

    model_config = _STRICT

    tolerance: float = Field(default=0.02, ge=0.0, lt=1.0)
    inputs: Path | None = None


class DisagreementLog(BaseModel):
    """Keep the shadowed inputs the models answered differently (rollout/disagreements.py): the
    text, both answers and probabilities, class, segment, stage and time. Off unless set: it
    stores users' text. `sample` of disagreeing requests are kept, at most `per_batch` inputs per
    router batch, in files of `max_file_bytes` rotated `keep_files` deep beside the rollout store.

    `agreeing` keeps that share of the requests the models agreed on too, so that an export
    represents the traffic: a student distilled on disagreements alone overcorrects (they lean
    one way: bench/loop.py measured round 2 disagreeing more, not less), while the traffic
    itself, disagreements included, is what the next student should match."""

    model_config = _STRICT

    sample: float = Field(default=1.0, gt=0.0, le=1.0)
    agreeing: float = Field(default=0.0, ge=0.0, le=1.0)
    per_batch: int = Field(default=100, ge=1, le=10_000)
    max_file_bytes: int = Field(default=64 * 2**20, ge=2**16)
    keep_files: int = Field(default=4, ge=1, le=100)


class RolloutSpec(BaseModel):
    """Stages plus gates; `tick_interval_s` is how often the controller re-evaluates."""

    model_config = _STRICT

    stages: list[Stage] = Field(default_factory=default_stages)
    agreement: AgreementGate | None = Field(default_factory=AgreementGate)
    agreement_by_class: ClassAgreementGuard | None = None
    accuracy: AccuracyGate | None = Field(default_factory=AccuracyGate)
    segments: SegmentGuard | None = None
    errors: ErrorGate | None = Field(default_factory=ErrorGate)
    latency: LatencyGate | None = Field(default_factory=LatencyGate)
    cost: CostGate | None = None
    fast_rollback: FastRollback | None = Field(default_factory=FastRollback)
    watch: WatchSpec | None = Field(default_factory=WatchSpec)
    smoke: SmokeTest | None = Field(default_factory=SmokeTest)
    disagreements: DisagreementLog | None = None
    dogfood_keys: tuple[Annotated[str, StringConstraints(min_length=1, max_length=256)], ...] = Field(
        default=(),
        max_length=1000,
        description="routing keys (users) always sent to the student; kept out of the gates' evidence",
    )
    max_stage_duration_s: float | None = Field(
        default=6 * 3600.0,
        gt=0.0,
        description="a stage still holding this long after it began (or resumed) takes `deadline_action`",
    )
    deadline_action: Literal["pause", "rollback"] = Field(
        default="pause",
        description="pause (the default: an inconclusive stage proved nothing bad; a person decides) or rollback",
    )
    tick_interval_s: float = Field(default=1.0, gt=0.0)
    pool_stages: bool = Field(
        default=True,
        description="errors and latency may pass on every stage's evidence (rollout/evidence.py says when that holds)",
    )

    @field_validator("stages")
    @classmethod
    def _stages_climb_from_0_to_1(cls, stages: list[Stage]) -> list[Stage]:
        if len(stages) < 2:
            raise ValueError(f"stages: need at least 2 stages (weights 0 and 1), got {len(stages)}")
        if stages[0].weight != 0:
            got = stages[0].weight
            raise ValueError(f"stages[0].weight must be 0 (the shadow stage), got {got}")
        last = len(stages) - 1
        if stages[last].weight != 1:
            got = stages[last].weight
            raise ValueError(f"stages[{last}].weight must be 1 (all traffic), got {got}")
        if stages[0].shadow_fraction == 0 and stages[0].min_requests > 0:
            raise ValueError(
                "stages[0].shadow_fraction is 0 but min_requests > 0: at weight 0 the student sees only "
                "shadow traffic, so the shadow stage could never be left (set a shadow fraction, or min_requests 0)"
            )
        for index in range(1, len(stages)):
            before, after = stages[index - 1].weight, stages[index].weight
            if after <= before:
                raise ValueError(
                    f"stages[{index}].weight must be greater than stages[{index - 1}]'s {before}, got {after}"
                )
        return stages

    def deadline_s(self, index: int) -> float | None:
        """Stage `index`'s deadline: its own `max_duration_s`, else the spec's default."""
        own = self.stages[index].max_duration_s
        return own if own is not None else self.max_stage_duration_s

    @property
    def max_label_age_s(self) -> float:
        """How old an answer may be when its label arrives (the accuracy gate's, else its default)."""
        return (self.accuracy or AccuracyGate()).max_label_age_s

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> RolloutSpec:
        """Validate a mapping (e.g. Ray Serve `user_config`); None or {} gives the defaults."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as error:
            raise SpecError(_describe(error)) from error

    @classmethod
    def from_yaml_text(cls, text: str) -> RolloutSpec:
        """Parse and validate YAML text; a document that is not a mapping is a SpecError."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SpecError(f"rollout spec is not valid YAML: {error}") from error
        if data is not None and not isinstance(data, Mapping):
            raise SpecError(f"rollout spec must be a mapping, got {type(data).__name__}")
        return cls.from_mapping(data)


def percent(weight: float) -> str:
    """A share of traffic for people to read: 0.05 -> "5 %". Every model, body, metric and store
    holds the fraction; only text meant for people shows a percentage."""
    return f"{weight * 100:g} %"


HOLD_S = 365 * 24 * 3600.0


def fixed_share_spec(shadow_fraction: float = 0.0) -> RolloutSpec:
    """A spec that judges nothing: no gates, no trip wire, stage 0 held for a year. For serving a
    fixed share: start the rollout and pin the weight (`set_weight`); routers then send that share
    to the student and compare `shadow_fraction` of requests on the other model."""
    hold = Stage(weight=0.0, min_requests=0, min_dwell_s=HOLD_S, shadow_fraction=shadow_fraction)
    full = Stage(weight=1.0, min_requests=0, min_dwell_s=HOLD_S, shadow_fraction=shadow_fraction)
    return RolloutSpec(
        stages=[hold, full],
        max_stage_duration_s=None,
        agreement=None,
        accuracy=None,
        errors=None,
        latency=None,
        fast_rollback=None,
        watch=None,
        smoke=None,
    )


def _describe(error: ValidationError) -> str:
    """One line per problem, each starting with the field path ("stages.2.min_requests: ...")."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "spec"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "invalid rollout spec: " + "; ".join(lines)
