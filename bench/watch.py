"""The watch after promotion, measured: how soon a drift is caught, how rarely a steady student
is falsely alarmed.

Usage: python -m bench.watch [--runs 200] [--workers 2] [--no-write]

Detection (`detect_delay_obs_median`): `--runs` simulated rollouts through the real router core
and controller (bench/simulation.py, `simulate_watch`), with bench/rollout.py's spec and its
default watch (5 % of requests compared, ARL 100,000, action rollback): a good student (agreement
0.99) promoted to 100 % and watched, whose agreement falls to 0.90 at a time drawn uniformly
between 5 and 15 minutes after promotion (50 requests/s, so some 750 to 2,250 compared pairs
before the change). The delay is the compared pairs between the change and the rollback.

False alarms (`false_alarm_arl_obs`): a steady student watched for 100,000 compared pairs would
take 11 hours at these rates, so the detectors the controller runs (rollout/watch.py, `feed`)
are fed directly with the events the controller would give them, one pair at a time: the
overall agreement, the teacher's class ("negative", the good student's every answer here) and
the segment ("other"), each pair agreeing with probability 0.99. `--steady-pairs` pairs over
`--steady-runs` watches; with no alarm the figure is a lower bound (the pairs watched). The
same detectors at the boundary of their guarantee (agreement exactly at the 0.97 floor, where
the bets are fair) are run until they alarm, `--boundary-runs` times: their mean run length is
what the guarantee (ARL >= 100,000) is about, and it is measured, not assumed.

Writes the `watch` block of bench/results/rollout.json (the rest of the file is the rollout
benchmark's) and the README's bench:watch section.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from multiprocessing import get_context
from typing import Any

import numpy as np

from bench.readme import replace_section
from bench.rollout import RESULTS, SPEC, _student
from bench.simulation import Scenario, WatchOutcome, simulate_watch
from bench.world import Drift
from rollout.spec import WatchSpec
from rollout.watch import AGREEMENT, WatchState, feed, start_watch

WATCH = SPEC.watch or WatchSpec()
BEFORE, AFTER = 0.99, 0.90
TARGETS = {"detect_delay_obs_median": 300, "false_alarm_arl_obs": 100_000}
SCENARIO = Scenario(requests_per_s=50.0, max_seconds=1800.0)
CHUNK = 50_000  # pairs fed to the detectors at once


def _detect(seed: int) -> dict[str, Any]:
    change_at = random.Random(seed).uniform(300.0, 900.0)
    profile = _student("drifting", agreement=BEFORE, drift=Drift(after_s=change_at, agreement=AFTER))
    return simulate_watch(SPEC, profile, SCENARIO, seed).model_dump(mode="json")


def _detectors() -> WatchState:
    """The detectors as the controller starts them for bench/rollout.py's spec (no labels here)."""
    floors = {AGREEMENT: SPEC.agreement.threshold if SPEC.agreement else 0.97, "class": 0.9, "segment": 0.9}
    return start_watch(WATCH.arl, floors, classes=2, segments=("mobile", "other"))


def _watched(seed: int, agreement: float, pairs: int) -> tuple[int, int]:
    """Feed `pairs` compared pairs at `agreement`, stopping at the first alarm: (pairs fed, alarms)."""
    rng, state, fed = np.random.default_rng(seed), _detectors(), 0
    while fed < pairs and not state.alarms:
        n = min(CHUNK, pairs - fed)
        misses = (rng.random(n) >= agreement).astype(float).tolist()
        events = []
        for x in misses:
            events += [(AGREEMENT, x), ("class:negative", x), ("segment:other", x)]
        state = feed(state, events)
        if state.alarms:  # every stream sees every pair here: the alarm's n is the pairs up to it
            return state.alarms[0].n, len(state.alarms)
        fed += n
    return fed, 0


def _steady(task: tuple[int, int]) -> tuple[int, int]:
    seed, pairs = task
    return _watched(seed, BEFORE, pairs)


def _boundary(task: tuple[int, int]) -> tuple[int, int]:
    seed, cap = task
    return _watched(seed, SPEC.agreement.threshold if SPEC.agreement else 0.97, cap)


def measure(runs: int, steady_runs: int, steady_pairs: int, boundary_runs: int, workers: int) -> dict[str, Any]:
    started = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        detected = [WatchOutcome.model_validate(o) for o in pool.map(_detect, range(runs), chunksize=5)]
        steady = pool.map(_steady, [(10_000 + s, steady_pairs) for s in range(steady_runs)])
        boundary = pool.map(_boundary, [(20_000 + s, 5_000_000) for s in range(boundary_runs)])
    delays = [o.delay_observations for o in detected if o.delay_observations is not None]
    seconds = [o.delay_seconds for o in detected if o.delay_seconds is not None]
    watched, alarms = sum(p for p, _ in steady), sum(a for _, a in steady)
    boundary_alarmed = [p for p, a in boundary if a]
    report: dict[str, Any] = {
        "runs": runs,
        "drift": f"agreement {BEFORE} -> {AFTER}, 5 to 15 minutes after promotion, 50 requests/s",
        "watch": WATCH.model_dump(mode="json"),
        "detected": len(delays),
        "false_alarms_before_change": sum(o.false_alarm for o in detected),
        "missed": runs - len(delays) - sum(o.false_alarm for o in detected),
        "detect_delay_obs_median": statistics.median(delays) if delays else None,
        "detect_delay_obs_p90": float(np.quantile(delays, 0.9, method="inverted_cdf")) if delays else None,
        "detect_delay_seconds_median": statistics.median(seconds) if seconds else None,
        "steady_runs": steady_runs,
        "steady_pairs_watched": watched,
        "steady_alarms": alarms,
        "false_alarm_arl_obs": watched / alarms if alarms else watched,
        "false_alarm_arl_is_lower_bound": alarms == 0,
        "boundary_runs": boundary_runs,
        "boundary_alarmed": len(boundary_alarmed),
        "boundary_arl_obs": statistics.mean(p for p, _ in boundary) if boundary else None,
        "method": {
            "detect_delay_obs": "compared pairs from the change to the rollback, through the real router core "
            "and controller (bench/simulation.py simulate_watch)",
            "false_alarm_arl_obs": "the controller's detectors (rollout.watch.feed) fed the events of a steady "
            "student (agreement 0.99) directly; watched pairs / alarms, or the pairs watched when none",
            "boundary_arl_obs": "the same detectors at agreement exactly at the floor, each run until its "
            "first alarm (5,000,000 pairs at most): the mean run length the guarantee bounds",
        },
    }
    report["targets"] = {
        "detect_delay_obs_median": {"target": TARGETS["detect_delay_obs_median"], "met": _at_most(report)},
        "false_alarm_arl_obs": {
            "target": TARGETS["false_alarm_arl_obs"],
            "met": report["false_alarm_arl_obs"] >= TARGETS["false_alarm_arl_obs"],
        },
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


def _at_most(report: dict[str, Any]) -> bool:
    median = report["detect_delay_obs_median"]
    return median is not None and median <= TARGETS["detect_delay_obs_median"] and report["missed"] == 0


def readme_text(report: dict[str, Any]) -> str:
    steady = f"{report['false_alarm_arl_obs']:,.0f}"
    if report["false_alarm_arl_is_lower_bound"]:
        steady = f"≥ {steady} (no alarm in {report['steady_pairs_watched']:,} pairs)"
    met = {key: "met" if value["met"] else "missed" for key, value in report["targets"].items()}
    return "\n".join(
        [
            f"The watch after promotion ({report['runs']} simulated watches through the router core and "
            f"controller; {report['drift']}; watch share {report['watch']['shadow_fraction']}, "
            f"ARL {report['watch']['arl']:,.0f}):",
            "",
            "| figure | kdcanary | target |",
            "|---|---|---|",
            "| drift caught, compared pairs after the change (median / p90) | "
            f"{report['detect_delay_obs_median']:.0f} / {report['detect_delay_obs_p90']:.0f} "
            f"({report['detect_delay_seconds_median']:.0f} s median; caught in "
            f"{report['detected']} of {report['runs']}) | ≤ 300 median — {met['detect_delay_obs_median']} |",
            f"| steady student, pairs per false alarm | {steady} | ≥ 100,000 — {met['false_alarm_arl_obs']} |",
            f"| detectors at the floor itself, mean pairs to an alarm | {report['boundary_arl_obs']:,.0f} "
            f"({report['boundary_alarmed']} of {report['boundary_runs']} runs alarmed) | ≥ 100,000 (the guarantee) |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="simulated watches with a drift")
    parser.add_argument("--steady-runs", type=int, default=10, help="steady watches fed to the detectors")
    parser.add_argument("--steady-pairs", type=int, default=1_000_000, help="compared pairs per steady watch")
    parser.add_argument("--boundary-runs", type=int, default=30, help="watches at the floor, each to its alarm")
    parser.add_argument("--workers", type=int, default=2, help="processes (at most 2 on a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args()
    report = measure(args.runs, args.steady_runs, args.steady_pairs, args.boundary_runs, args.workers)
    print(json.dumps({k: v for k, v in report.items() if k not in ("method", "watch")}, indent=2))
    if not args.no_write:
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        RESULTS.write_text(json.dumps({**results, "watch": report}, indent=2) + "\n")
        replace_section("watch", readme_text(report))


if __name__ == "__main__":
    main()
