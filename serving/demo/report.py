"""The demo's report: a markdown summary of each rollout (decisions with their evidence) and
one PNG per rollout charting weight, agreement with its bounds, latency and cost over time."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rollout.events import Event
from rollout.spec import percent
from serving.demo.view import VARIANTS, Sample


class ScenarioResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    student: str
    student_id: str
    phase: str  # the rollout's final phase
    seconds: float
    rollback_reason: str | None
    samples: list[Sample]
    events: list[Event]
    watch: str | None = None  # the watch's verdict at the end, for a promoted student


def write_report(results: list[ScenarioResult], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# kdcanary demo\n"]
    for result in results:
        chart = out / f"{result.name}.png"
        _chart(result, chart)
        sections.append(_section(result, chart.name))
    summary = out / "summary.md"
    summary.write_text("\n".join(sections))
    return summary


def _section(result: ScenarioResult, chart: str) -> str:
    verdict = {
        "completed": "promoted to 100 %",
        "watching": "promoted to 100 % and watched",
        "rolled_back": "rolled back",
    }.get(result.phase, result.phase)
    lines = [
        f"## {result.title}\n",
        f"Student `{result.student}` ({result.student_id}): **{verdict}** after {result.seconds:.0f} s.",
    ]
    if result.rollback_reason:
        lines.append(f"\nReason: {result.rollback_reason}")
    if result.watch:
        lines.append(f"\nAfter promotion: {result.watch}")
    if result.samples:
        lines.append(f"\n{_labels(result.samples[-1])}")
    lines += ["", f"![{result.name}]({chart})", "", "| t (s) | event | by | weight | reasons and evidence |"]
    lines.append("|---|---|---|---|---|")
    start = result.events[0].at if result.events else 0.0
    for event in result.events:
        weight = event.payload.get("to", event.payload.get("status", {})).get("weight")
        reason = event.reason.replace("|", "/")
        lines.append(
            f"| {event.at - start:.1f} | {event.kind.value}: {event.action} | {event.actor or 'controller'} "
            f"| {'' if weight is None else percent(weight)} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def _labels(last: Sample) -> str:
    """What the labels sent back as feedback showed, at the end of the rollout."""
    online = ", ".join(
        f"{v} {'n/a' if last.online_accuracy[v] is None else f'{last.online_accuracy[v]:.3f}'} (n={last.labelled[v]})"
        for v in VARIANTS
    )
    p, a = last.paired, last.accuracy
    gate = "no verdict yet" if a["estimate"] is None else (
        f"student - teacher {a['estimate']:+.3f}, bounds [{_text(a['lower'])}, {_text(a['upper'])}], "
        f"{last.gates.get('accuracy', 'n/a')}"
    )  # fmt: skip
    return (
        f"Labels (feedback): online accuracy {online}; paired inputs {sum(p.values())}: only the student "
        f"right {p['only_student']}, only the teacher right {p['only_teacher']}; accuracy gate: {gate}."
    )


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _chart(result: ScenarioResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.samples
    t = [x.t for x in s]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].step(t, [100 * x.weight for x in s], where="post", label="weight (set)")
    axes[0].plot(t, [100 * x.student_share for x in s], alpha=0.6, label="student share (observed, 10 s)")
    axes[0].set_ylabel("% of traffic")
    estimate = [_nan(x.agreement["estimate"]) for x in s]
    axes[1].plot(t, estimate, label="agreement")
    axes[1].fill_between(t, [_nan(x.agreement["lower"]) for x in s], [_nan(x.agreement["upper"]) for x in s],
                         alpha=0.25, label="confidence sequence")  # fmt: skip
    axes[1].plot(t, [_nan(x.agreement["threshold"]) for x in s], "k--", label="threshold")
    axes[1].set_ylabel("top-1 agreement")
    for variant in VARIANTS:
        axes[2].plot(t, [_nan(x.p50_ms[variant]) for x in s], label=f"{variant} p50")
        axes[2].plot(t, [_nan(x.p99_ms[variant]) for x in s], ":", label=f"{variant} p99")
        axes[3].plot(t, [_nan(x.cost_per_1k[variant]) for x in s], label=variant)
    axes[2].set_ylabel("latency ms")
    axes[3].set_ylabel("$ per 1k inputs")
    axes[3].set_xlabel("seconds since the rollout started")
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.title}: {result.student}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
