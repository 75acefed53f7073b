"""The rollout benchmark's README text (bench:rollout): its tables and the paragraphs around them,
from the report bench/rollout.py writes to bench/results/rollout.json."""

from __future__ import annotations

from typing import Any

from bench.readme import replace_section
from rollout.spec import percent

SYSTEMS = ("kdcanary", "baseline")

ISSUE12_LIMITS = {"rolled_back_share": 0.99, "observations_median": 1500, "promoted_share": 0.95, "ratio": 1.1}


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "never"
    if kind == "rate":
        return f"{100 * value:.1f} %"
    return f"{value:.2f} min" if kind == "minutes" else f"{value:,.0f}"


def _target_table(report: dict[str, Any]) -> list[str]:
    rows = [
        ("good student false rollback rate (any gate) ≤ 1 %", "false_rollback_rate", "rate"),
        ("bad student rolled back after ≤ 150 student observations (median)", "detect_median_obs", "obs"),
        ("... and ≤ 300 at p95", "detect_p95_obs", "obs"),
        ("full promotion of a good student at 50 requests/s ≤ 5 min (median)", "promotion_minutes_50rps", "minutes"),
    ]
    lines = ["| target | kdcanary | Flagger-style baseline |", "|---|---|---|"]
    for text, key, kind in rows:
        cells = []
        for system in SYSTEMS:
            met = report["targets"][system][key]
            cells.append(f"{_fmt(report[system][key], kind)} — {'met' if met else 'not met'}")
        lines.append(f"| {text} | {cells[0]} | {cells[1]} |")
    return lines


def _profile_table(report: dict[str, Any], descriptions: dict[str, str]) -> list[str]:
    lines = [
        "| student | truth | runs | kdcanary rolled back / promoted / undecided | to rollback: obs / served / s "
        "| min to promote | baseline rolled back / promoted / undecided | to rollback: obs / served / s "
        "| min to promote |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["profiles"].items():
        cells = [name, descriptions[name], str(entry["kdcanary"]["runs"])]
        for system in SYSTEMS:
            s = entry[system]
            cells.append(f"{s['rolled_back']} / {s['completed']} / {s['timed_out']}")
            obs, served, seconds = (s[key]["median"] for key in ("detect_obs", "detect_served", "detect_seconds"))
            cells.append("—" if obs is None else f"{_fmt(obs, 'obs')} / {_fmt(served, 'obs')} / {_fmt(seconds, 'obs')}")
            cells.append(_fmt(s["promotion_minutes"]["median"], "minutes").removesuffix(" min"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _issue12_table(report: dict[str, Any]) -> list[str]:
    t, light = report["issue12"], report["light_shadow"]
    verdict = {True: "met", False: "not met"}
    ratio = light["ratio_to_floor"]
    rows = [
        (
            "minority_class rolled back in ≥ 99 % of runs, median ≤ 1500 student observations",
            f"{100 * t['minority_class']['rolled_back_share']:.1f} %, "
            f"{_fmt(t['minority_class']['observations_median'], 'obs')}",
            t["minority_class"]["met"],
        ),
        (
            "segment_regression rolled back in ≥ 99 %, median ≤ 1500 student observations",
            f"{100 * t['segment_regression']['rolled_back_share']:.1f} %, "
            f"{_fmt(t['segment_regression']['observations_median'], 'obs')}",
            t["segment_regression"]["met"],
        ),
        (
            "good student false rollbacks (every gate) ≤ 1 %",
            _fmt(t["good"]["false_rollback_rate"], "rate"),
            t["good"]["met"],
        ),
        (
            "label_worse rolled back in ≥ 99 %",
            f"{100 * t['label_worse']['rolled_back_share']:.1f} %",
            t["label_worse"]["met"],
        ),
        (
            "label_better promoted in ≥ 95 %",
            f"{100 * t['label_better']['promoted_share']:.1f} %",
            t["label_better"]["met"],
        ),
        (
            "light shadow (0.25, then ≤ 0.1): promotion ≤ 1.1 × the spec's floor (median)",
            f"{_fmt(light['promotion_minutes_median'], 'minutes')} / floor {_fmt(light['floor_minutes'], 'minutes')}"
            f" = {'never' if ratio is None else f'{ratio:.3f}'}",
            ratio is not None and ratio <= ISSUE12_LIMITS["ratio"],
        ),
    ]
    lines = ["| target (issue 12) | kdcanary | |", "|---|---|---|"]
    return lines + [f"| {text} | {figure} | {verdict[met]} |" for text, figure, met in rows]


def _light_shadow_text(report: dict[str, Any]) -> str:
    light, good = report["light_shadow"], report["profiles"]["good"]["kdcanary"]
    shadows = "/".join(f"{s:g}" for s in light["shadow_fractions"])
    return (
        "Promotion near the floor: agreement, accuracy and the class and segment guards pool across stages, and so "
        "do errors and latency (`pool_stages`: a stage's own evidence can still fail them), so after the shadow "
        "stage, where the error margin and a finite p99 bound need about 1,500 student observations, each stage "
        f"takes what its min_requests and min_dwell_s take. With the default shadow fractions ({shadows}) the good "
        f"student is promoted in a median of {_fmt(light['promotion_minutes_median'], 'minutes')} "
        f"({light['runs']} runs) against a floor of {_fmt(light['floor_minutes'], 'minutes')}; the spec above, "
        f"which mirrors more, takes {_fmt(good['promotion_minutes']['median'], 'minutes')}. The bad student's p95 "
        f"({_fmt(report['kdcanary']['detect_p95_obs'], 'obs')}, limit 300) includes what arrives between looks: "
        "gates are judged once per 1 s tick, and about 25 student observations arrive per tick in the shadow stage."
    )


def _no_traffic_text(outcomes: dict[str, dict[str, Any]]) -> str:
    kd, base = outcomes["kdcanary"], outcomes["baseline"]
    return (
        f"Missing data (no traffic for {kd['seconds']:g} s): kdcanary {kd['result'].replace('_', ' ')} at stage "
        f"{kd['stage_index']} ({percent(kd['weight'])}), its gates inconclusive, never a verdict; the baseline "
        f"{base['result'].replace('_', ' ')} after {base['seconds']:g} s, each empty analysis a failed check "
        '(Flagger\'s "no values found").'
    )


def update_readme(report: dict[str, Any], descriptions: dict[str, str]) -> None:
    good = report["profiles"]["good"]
    p95 = {s: good[s]["promotion_minutes"]["p95"] for s in SYSTEMS}
    lines = [
        f"{report['runs']} simulated rollouts per target student at {report['scenario']['requests_per_s']:g} "
        "requests/s, the same request streams (seeds) for both systems, served by the router's own core; "
        "kdcanary is the real `RolloutController` with stages 0/5/10/25/50/100 % (min_requests 1000, "
        "min_dwell_s 30, shadow 0.5/1/1/0.5/0.5/0.5), the default gates (alpha 0.05 each, error margin "
        "0.01, p99 ratio 1.5, accuracy margin 0.01 deciding once 50 labels arrived), agreement 0.97 and each "
        "class and declared segment at 0.9; the baseline is Flagger's analysis (1-minute interval, fixed thresholds, "
        "rollback after 5 failed checks, no data = failed check).",
        "",
        *_target_table(report),
        "",
        f"False rollbacks, 95 % upper bound (Robbins' sequence): kdcanary "
        f"{_fmt(report['kdcanary']['false_rollback_rate_upper95'], 'rate')} ({good['kdcanary']['runs']} runs), "
        f"baseline {_fmt(report['baseline']['false_rollback_rate_upper95'], 'rate')} "
        f"({good['baseline']['runs']} runs: its figures are set by its 1-minute clock, not by chance). "
        f"Promotion p95: kdcanary {_fmt(p95['kdcanary'], 'minutes')}, baseline {_fmt(p95['baseline'], 'minutes')}. "
        "The baseline's 5 minutes are its clock (one step per interval), not evidence: it promotes "
        "whatever passes five point-estimate checks, and it needs six intervals to reject anything.",
        "",
        *_issue12_table(report),
        "",
        _light_shadow_text(report),
        "",
        _no_traffic_text(report["no_traffic"]),
        "",
        f"Every student ({report['other_runs']} runs each beyond the two targets, the baseline at most "
        f"{report['baseline_runs']}; medians; obs = student "
        "observations, served = requests the student answered for users, s = simulated seconds; undecided = "
        f"still holding after {report['scenario']['max_seconds'] / 60:g} minutes):",
        "",
        *_profile_table(report, descriptions),
    ]
    replace_section("rollout", "\n".join(lines))
