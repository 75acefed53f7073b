"""Rollout benchmark: simulated rollouts through the real controller and a Flagger-style baseline.

`bench.simulation` drives the router's own core (`serving.router_core.RouterCore`) with a seeded
Poisson stream of requests (identical for both systems) to students drawn from known truths: a
good one (agreement 0.99, errors and latency equal to the teacher's), a bad one (agreement 0.90),
and students with lower agreement, more errors, a slower tail, or failures on one slice of
traffic only. Each runs under kdcanary (the real `rollout.controller.RolloutController` with
`SPEC`) and under a Flagger-style analysis (bench/baseline.py: fixed 1-minute interval, fixed
thresholds, 5 failed checks to roll back), through the same loop, at 50 requests/s in total.

Targets (issue 4), over at least 1000 rollouts each:

- good student, agreement 0.99 vs threshold 0.97: false rollback rate <= 1 % (any gate);
- bad student, agreement 0.90: rolled back after a median of <= 150 student observations,
  <= 300 at p95;
- full promotion of a good student at 50 requests/s: <= 5 minutes (median over runs).

Targets (issue 12): `minority_class` (a class of 10 % of traffic at agreement 0.80) and
`segment_regression` (the same on one declared segment) rolled back in >= 99 % of 1000 runs at
a median of <= 1500 student observations; `label_worse` (labels show the student 2.5 points
less accurate, agreement 0.975) rolled back in >= 99 % and `label_better` (1 point more
accurate, agreement 0.95) promoted in >= 95 % of 200 runs; and with the default shadow
fractions (0.25 at stage 0, at most 0.1 after: `light_shadow`) the good student promoted in a
median of <= 1.1 x the spec's floor, the time its min_requests and min_dwell_s take at 50
requests/s.

Writes bench/results/rollout.json ({"runs", "kdcanary": {...}, "baseline": {...}} plus the
spec, per-profile outcome counts and figures, `light_shadow`) and the README's bench:rollout
section.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bench.baseline import BaselineSpec, simulate_baseline
from bench.rollout_readme import ISSUE12_LIMITS, SYSTEMS, update_readme
from bench.simulation import Outcome, Result, Scenario, causes, simulate_kdcanary
from bench.world import LabelProfile, LatencyProfile, StudentProfile, TrafficSlice
from rollout.spec import RolloutSpec, default_stages
from rollout.stats import bernoulli_cs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "rollout.json"

WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
SHADOW = (0.5, 1.0, 1.0, 0.5, 0.5, 0.5)
"""Shadow fractions per stage. Mirroring costs compute on the model that answers the shadow:
up to 10 % that is the student (about 7x cheaper than the teacher); above, the teacher, which
stays provisioned for all traffic until the rollout completes, so its load (1 - w) + w s never
exceeds what it carried before. Stage 0 mirrors half the traffic, not all: gates are judged
once per tick, so a faster stream there only adds observations between look and verdict."""
SPEC = RolloutSpec.from_mapping(
    {
        "stages": [
            {"weight": w, "min_requests": 1000, "min_dwell_s": 30, "shadow_fraction": s}
            for w, s in zip(WEIGHTS, SHADOW, strict=True)
        ],
        "agreement": {"threshold": 0.97, "alpha": 0.05},
        "agreement_by_class": {"threshold": 0.9, "alpha": 0.05, "classes": 2},
        "segments": {"names": ["mobile"], "threshold": 0.9, "alpha": 0.05, "accuracy_margin": None},
    }
)
"""kdcanary's spec: the default gates (alpha 0.05 each, error margin 0.01, p99 ratio 1.5,
accuracy margin 0.01, the default trip wire, 1 s ticks), agreement threshold 0.97, each class
(the teacher's label) and the declared segment ("mobile", and "other") at 0.9, and stages sized
for 50 requests/s. Segments are judged on agreement only: no simulated profile labels a segment."""

DEFAULT_SHADOW = tuple(stage.shadow_fraction for stage in default_stages())
LIGHT_SHADOW_SPEC = SPEC.model_copy(
    update={
        "stages": [
            stage.model_copy(update={"shadow_fraction": s})
            for stage, s in zip(SPEC.stages, DEFAULT_SHADOW, strict=True)
        ]
    }
)
"""The same spec with the project's default shadow fractions (0.25 at stage 0, at most 0.1
after): promotion as fast as the spec's floor allows, without the teacher answering twice."""


def floor_seconds(spec: RolloutSpec, requests_per_s: float) -> float:
    """The time `spec`'s own min_requests and min_dwell_s take at `requests_per_s`: per stage,
    the student observes its share of requests plus its shadows of the rest."""
    total = 0.0
    for stage in spec.stages:
        observed_per_s = requests_per_s * (stage.weight + (1 - stage.weight) * stage.shadow_fraction)
        total += max(stage.min_dwell_s, stage.min_requests / observed_per_s)
    return total


TEACHER = LatencyProfile(p50_s=0.015, p99_s=0.030)
BASELINE = BaselineSpec(
    interval_s=60,
    step_weights=(0.05, 0.1, 0.25, 0.5, 1.0),
    threshold=5,
    min_agreement=0.97,
    max_error_rate=0.01,
    max_p99_s=1.5 * TEACHER.p99_s,
    shadow_fractions=SHADOW[1:],
)
"""Flagger's defaults (1 m interval, threshold 5), the same thresholds as kdcanary's gates as
fixed numbers (error rate <= 1 %, p99 <= 1.5 x the teacher's known p99), and the router's
shadow fractions at the same weights, so both see the same comparisons per request."""


def _student(name: str, **truth: Any) -> StudentProfile:
    base: dict[str, Any] = {"agreement": 0.99, "student_latency": TEACHER, "teacher_latency": TEACHER}
    return StudentProfile(name=name, **{**base, **truth})


PROFILES: dict[str, StudentProfile] = {
    "good": _student("good"),
    "bad": _student("bad", agreement=0.90),
    "lower_agreement": _student("lower_agreement", agreement=0.95),
    "errors": _student("errors", error_rate=0.03),
    "slow_tail": _student("slow_tail", student_latency=LatencyProfile(p50_s=0.015, p99_s=0.090)),
    "slice_disagree": _student("slice_disagree", slice=TrafficSlice(fraction=0.10, agreement=0.60, error_rate=0.001)),
    "slice_errors": _student("slice_errors", slice=TrafficSlice(fraction=0.05, agreement=0.99, error_rate=0.40)),
    "broken": _student("broken", error_rate=1.0),
    "minority_class": _student(
        "minority_class", agreement=0.995, slice=TrafficSlice(fraction=0.10, agreement=0.80, error_rate=0.001)
    ),
    "segment_regression": _student(
        "segment_regression",
        agreement=0.995,
        slice=TrafficSlice(fraction=0.10, agreement=0.80, error_rate=0.001, segment="mobile"),
    ),
    "label_worse": _student("label_worse", agreement=0.975, labels=LabelProfile(student_right_when_disagree=0.0)),
    "label_better": _student("label_better", agreement=0.95, labels=LabelProfile(student_right_when_disagree=0.6)),
}
TARGET_PROFILES = ("good", "bad", "minority_class", "segment_regression")
DESCRIPTIONS = {
    "good": "agreement 0.99, errors 0.1 %, latency = teacher's",
    "bad": "agreement 0.90",
    "lower_agreement": "agreement 0.95",
    "errors": "errors 3 % (teacher 0.1 %)",
    "slow_tail": "p99 90 ms (teacher 30 ms), same p50",
    "slice_disagree": "agreement 0.60 on 10 % of traffic (0.951 overall)",
    "slice_errors": "errors 40 % on 5 % of traffic (2.1 % overall)",
    "broken": "every student request fails",
    "minority_class": "agreement 0.80 on a class of 10 % of traffic, 0.995 on the rest (0.9755 overall)",
    "segment_regression": "agreement 0.80 on requests of the declared segment 'mobile' (10 % of traffic), "
    "0.995 on the rest (0.9755 overall)",
    "label_worse": "agreement 0.975, every disagreement the student's mistake (2.5 points less accurate); "
    "labels for 30 % of requests, 60 s mean delay",
    "label_better": "agreement 0.95, the student right in 60 % of disagreements (1 point more accurate); same labels",
}

Task = tuple[str, str, Scenario, list[int]]


def _run(task: Task) -> tuple[str, str, list[dict[str, Any]]]:
    """One chunk of seeds: "kdcanary", "baseline", or "light_shadow" (kdcanary, LIGHT_SHADOW_SPEC)."""
    system, name, scenario, seeds = task
    profile = PROFILES[name]
    if system == "baseline":
        outcomes = [simulate_baseline(BASELINE, profile, scenario, seed) for seed in seeds]
    else:
        spec = SPEC if system == "kdcanary" else LIGHT_SHADOW_SPEC
        outcomes = [simulate_kdcanary(spec, profile, scenario, seed) for seed in seeds]
    return system, name, [o.model_dump(mode="json") for o in outcomes]


def _tasks(counts: RunCounts, scenario: Scenario, chunk: int) -> Iterator[Task]:
    """Expensive tasks first (good students run to completion), seeds in chunks; the baseline
    runs the first `counts.baseline` seeds of each student's (the same request streams)."""
    shadow_runs = counts.light_shadow
    for start in range(0, shadow_runs, chunk // 5):
        yield ("light_shadow", "good", scenario, list(range(start, min(shadow_runs, start + chunk // 5))))
    for name in PROFILES:
        count = counts.runs if name in TARGET_PROFILES else counts.other
        for system, n in (("kdcanary", count), ("baseline", min(count, counts.baseline))):
            for start in range(0, n, chunk):
                yield (system, name, scenario, list(range(start, min(n, start + chunk))))


@dataclass(frozen=True)
class RunCounts:
    """Rollouts per student: the two targets, every other student, the baseline's (at most),
    and the good student under the default (light) shadow fractions."""

    runs: int
    other: int
    baseline: int
    light_shadow: int


def simulate_all(counts: RunCounts, scenario: Scenario, workers: int) -> dict[str, dict[str, list[Outcome]]]:
    """Every profile through both systems (and the good one under LIGHT_SHADOW_SPEC), by
    profile then system; outcomes sorted by seed, so the result does not depend on scheduling."""
    tasks = list(_tasks(counts, scenario, chunk=50))
    collected: dict[str, dict[str, list[Outcome]]] = {name: {s: [] for s in SYSTEMS} for name in PROFILES}
    collected["good"]["light_shadow"] = []
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            results = list(pool.imap_unordered(_run, tasks))
    else:
        results = [_run(task) for task in tasks]
    for system, name, dumped in results:
        collected[name][system] += [Outcome.model_validate(o) for o in dumped]
    for systems in collected.values():
        for outcomes in systems.values():
            outcomes.sort(key=lambda o: o.seed)
    return collected


def _quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (inverted CDF, so an actual run's value); None when it is a run that never
    got there (recorded as inf)."""
    if not values:
        return None
    value = float(np.quantile(np.asarray(values, dtype=float), q, method="inverted_cdf"))
    return None if math.isinf(value) else value


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    """Outcome counts and figures for one profile under one system.

    `rollback_rate_upper95` is Robbins' 95 % confidence bound on the rate (rollout.stats).

    Detection figures count runs that were not rolled back as never detected (infinite), and
    promotion figures count runs that were not promoted as never promoted.
    """
    n = len(outcomes)
    count = {r: sum(o.result is r for o in outcomes) for r in Result}
    back = [o.result is Result.ROLLED_BACK for o in outcomes]
    done = [o.result is Result.COMPLETED for o in outcomes]
    detect_obs = [o.student_observations if b else math.inf for o, b in zip(outcomes, back, strict=True)]
    detect_s = [o.seconds if b else math.inf for o, b in zip(outcomes, back, strict=True)]
    served = [o.student_served if b else math.inf for o, b in zip(outcomes, back, strict=True)]
    minutes = [o.seconds / 60 if d else math.inf for o, d in zip(outcomes, done, strict=True)]
    return {
        "runs": n,
        **{r.value: count[r] for r in Result},
        "rollback_rate": count[Result.ROLLED_BACK] / n if n else None,
        "rollback_rate_upper95": bernoulli_cs(count[Result.ROLLED_BACK], n, 0.05).upper if n else None,
        "rollback_causes": causes(outcomes),
        "student_observations_median": _quantile([o.student_observations for o in outcomes], 0.5),
        "student_observations_to_rollback_median": _quantile(detect_obs, 0.5),
        "detect_obs": {"median": _quantile(detect_obs, 0.5), "p95": _quantile(detect_obs, 0.95)},
        "detect_seconds": {"median": _quantile(detect_s, 0.5), "p95": _quantile(detect_s, 0.95)},
        "detect_served": {"median": _quantile(served, 0.5), "p95": _quantile(served, 0.95)},
        "promotion_minutes": {"median": _quantile(minutes, 0.5), "p95": _quantile(minutes, 0.95)},
    }


def headline(summaries: dict[str, dict[str, Any]], system: str) -> dict[str, float | None]:
    """The four figures the issue asks for (and the false-rollback rate's upper bound), for one system."""
    good, bad = summaries["good"][system], summaries["bad"][system]
    return {
        "false_rollback_rate": good["rollback_rate"],
        "false_rollback_rate_upper95": good["rollback_rate_upper95"],
        "detect_median_obs": bad["detect_obs"]["median"],
        "detect_p95_obs": bad["detect_obs"]["p95"],
        "promotion_minutes_50rps": good["promotion_minutes"]["median"],
    }


LIMITS = {
    "false_rollback_rate": 0.01,
    "detect_median_obs": 150.0,
    "detect_p95_obs": 300.0,
    "promotion_minutes_50rps": 5.0,
}


def _against_target(figures: dict[str, float | None]) -> dict[str, bool]:
    """Met when the figure exists (the runs got there) and is within its limit."""
    return {key: (value := figures[key]) is not None and value <= limit for key, limit in LIMITS.items()}


def light_shadow(outcomes: list[Outcome], scenario: Scenario) -> dict[str, Any]:
    """The good student under LIGHT_SHADOW_SPEC against that spec's floor at the same traffic."""
    floor = floor_seconds(LIGHT_SHADOW_SPEC, scenario.requests_per_s) / 60
    summary = summarize(outcomes)
    median = summary["promotion_minutes"]["median"]
    return {
        "shadow_fractions": DEFAULT_SHADOW,
        "runs": summary["runs"],
        "completed": summary["completed"],
        "floor_minutes": floor,
        "promotion_minutes_median": median,
        "ratio_to_floor": None if median is None else median / floor,
        "good": summary,
    }


def issue12_targets(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 12's per-profile figures against their limits (kdcanary only)."""
    out = {}
    for name in ("minority_class", "segment_regression", "label_worse"):
        s = summaries[name]["kdcanary"]
        share = s["rolled_back"] / s["runs"]
        observations = s["student_observations_to_rollback_median"]
        met = share >= ISSUE12_LIMITS["rolled_back_share"]
        if name != "label_worse":
            met = met and observations is not None and observations <= ISSUE12_LIMITS["observations_median"]
        out[name] = {"rolled_back_share": share, "observations_median": observations, "met": met}
    better = summaries["label_better"]["kdcanary"]
    share = better["completed"] / better["runs"]
    out["label_better"] = {"promoted_share": share, "met": share >= ISSUE12_LIMITS["promoted_share"]}
    good = summaries["good"]["kdcanary"]
    out["good"] = {"false_rollback_rate": good["rollback_rate"], "met": good["rollback_rate"] <= 0.01}
    return out


def no_traffic() -> dict[str, dict[str, Any]]:
    """Missing data: a good student with no traffic at all for 10 minutes (deterministic).

    kdcanary's gates stay inconclusive and it holds at stage 0; the baseline counts every
    empty analysis as a failed check and rolls back after its threshold.
    """
    scenario = Scenario(requests_per_s=0.0, max_seconds=600.0)
    good = PROFILES["good"]
    return {
        "kdcanary": simulate_kdcanary(SPEC, good, scenario, 0).model_dump(mode="json"),
        "baseline": simulate_baseline(BASELINE, good, scenario, 0).model_dump(mode="json"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="rollouts of the good and bad students")
    parser.add_argument("--other-runs", type=int, default=200, help="rollouts of every other student")
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=200,
        help="baseline rollouts per student, at most (its clock sets its figures)",
    )
    parser.add_argument("--light-shadow-runs", type=int, default=200, help="good-student runs, default shadows")
    parser.add_argument("--rps", type=float, default=50.0, help="total requests per second")
    parser.add_argument("--workers", type=int, default=2, help="processes (at most 2 on a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args()
    started = time.perf_counter()
    scenario = Scenario(requests_per_s=args.rps, max_seconds=1800.0)
    counts = RunCounts(args.runs, args.other_runs, args.baseline_runs, args.light_shadow_runs)
    collected = simulate_all(counts, scenario, args.workers)
    summaries = {name: {s: summarize(collected[name][s]) for s in SYSTEMS} for name in PROFILES}
    report: dict[str, Any] = {"runs": args.runs, **{s: headline(summaries, s) for s in SYSTEMS}}
    report["targets"] = {s: _against_target(report[s]) for s in SYSTEMS}
    report |= {
        "limits": LIMITS,
        "other_runs": args.other_runs,
        "baseline_runs": args.baseline_runs,
        "scenario": scenario.model_dump(),
        "spec": SPEC.model_dump(mode="json"),
        "baseline_spec": BASELINE.model_dump(mode="json"),
        "profiles": {name: {"profile": PROFILES[name].model_dump(mode="json"), **summaries[name]} for name in PROFILES},
        "light_shadow": light_shadow(collected["good"]["light_shadow"], scenario),
        "issue12": issue12_targets(summaries),
        "no_traffic": no_traffic(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps({k: report[k] for k in ("runs", *SYSTEMS, "targets", "elapsed_s")}, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        kept = {"watch": json.loads(RESULTS.read_text()).get("watch")} if RESULTS.is_file() else {}  # bench/watch.py's
        RESULTS.write_text(json.dumps(report | {k: v for k, v in kept.items() if v is not None}, indent=2) + "\n")
        update_readme(report, DESCRIPTIONS)


if __name__ == "__main__":
    main()
