"""What the demo shows each second: one `Sample` from the controller's status, the load
generator's window and Ray's metrics endpoint, rendered as a small terminal panel.

Cost comes from the same place Grafana reads it, Ray's metrics endpoint: dollars per scored
input per variant (`ray_kdcanary_cost_dollars_total / ray_kdcanary_model_inputs_total`, shadow
work included). The projected saving is what serving all traffic on the student would save
against the teacher, per scored input.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict

from rollout.views import StatusView
from serving.demo.load import Window
from serving.metrics import scrape

VARIANTS = ("teacher", "student")
GATE_NUMBERS = ("estimate", "lower", "upper", "threshold", "n")
PAIRED = ("both_right", "both_wrong", "only_student", "only_teacher")


class Sample(BaseModel):
    model_config = ConfigDict(frozen=True)

    t: float  # seconds since the scenario began
    phase: str
    stage_index: int
    stage_count: int
    weight: float
    agreement: dict[str, float | None]  # estimate, lower, upper, threshold, n
    accuracy: dict[str, float | None]  # the accuracy gate: estimate, lower, upper, threshold, n
    online_accuracy: dict[str, float | None]  # per variant: right / labelled (None: no label yet)
    labelled: dict[str, int]  # per variant: labelled answers it served
    paired: dict[str, int]  # labelled inputs both answered: both_right, both_wrong, only_student, only_teacher
    gates: dict[str, str]  # gate name -> verdict
    rate_per_s: float
    student_share: float
    errors: int
    p50_ms: dict[str, float | None]
    p99_ms: dict[str, float | None]
    cost_per_1k: dict[str, float | None]  # dollars per 1000 scored inputs
    saving: float | None  # 1 - student cost / teacher cost
    message: str


def scrape_costs(metrics_url: str, application: str) -> dict[str, float | None]:
    """Dollars per 1000 scored inputs per variant, from Ray's metrics endpoint (None: no data yet)."""
    sums: dict[tuple[str, str], float] = {}
    try:
        samples = scrape(metrics_url, timeout_s=5.0)
    except httpx.HTTPError:
        return dict.fromkeys(VARIANTS)
    wanted = ("ray_kdcanary_cost_dollars_total", "ray_kdcanary_model_inputs_total")
    for sample in samples:
        if sample.name in wanted and sample.labels.get("application") == application:
            key = (sample.name, sample.labels.get("variant", ""))
            sums[key] = sums.get(key, 0.0) + sample.value
    out: dict[str, float | None] = {}
    for variant in VARIANTS:
        inputs = sums.get(("ray_kdcanary_model_inputs_total", variant), 0.0)
        dollars = sums.get(("ray_kdcanary_cost_dollars_total", variant), 0.0)
        out[variant] = 1000.0 * dollars / inputs if inputs else None
    return out


def sample(t: float, status: StatusView, window: Window, costs: dict[str, float | None]) -> Sample:
    gates = {g.name: g for g in status.gates}
    agreement = gates["agreement"].model_dump() if "agreement" in gates else {}
    accuracy = gates["accuracy"].model_dump() if "accuracy" in gates else {}
    counts = status.evidence
    labelled = {v: getattr(counts, f"{v}_labelled") for v in VARIANTS}
    right = {v: getattr(counts, f"{v}_correct") for v in VARIANTS}
    teacher, student = costs.get("teacher"), costs.get("student")
    return Sample(
        t=t,
        phase=status.phase.value,
        stage_index=status.stage_index,
        stage_count=status.stage_count,
        weight=status.routing.weight,
        agreement={k: agreement.get(k) for k in GATE_NUMBERS},
        accuracy={k: accuracy.get(k) for k in GATE_NUMBERS},
        online_accuracy={v: right[v] / labelled[v] if labelled[v] else None for v in VARIANTS},
        labelled=labelled,
        paired={k: getattr(counts, k) for k in PAIRED},
        gates={name: g.verdict.value for name, g in gates.items()},
        rate_per_s=window.rate_per_s,
        student_share=window.share("student"),
        errors=window.errors,
        p50_ms={v: window.variants[v].p50_ms for v in VARIANTS},
        p99_ms={v: window.variants[v].p99_ms for v in VARIANTS},
        cost_per_1k=costs,
        saving=1.0 - student / teacher if teacher and student is not None else None,
        message=status.message,
    )


def render(title: str, s: Sample) -> str:
    a = s.agreement
    bounds = "n/a" if a["estimate"] is None else f"{a['estimate']:.3f} [{_f(a['lower'])}, {_f(a['upper'])}]"
    lines = [
        f"── {title} ── {s.t:5.0f} s ──",
        f"phase {s.phase:<12} stage {s.stage_index}/{s.stage_count - 1}   weight {s.weight:6.1%}   "
        f"observed student share {s.student_share:6.1%}",
        f"agreement {bounds}  threshold {_f(a['threshold'])}  n={int(a['n'] or 0)}   "
        + "  ".join(f"{name}: {verdict}" for name, verdict in s.gates.items()),
        _accuracy_line(s),
        f"traffic {s.rate_per_s:5.1f} req/s   errors {s.errors}",
    ]
    for v in VARIANTS:
        cost = s.cost_per_1k[v]
        lines.append(
            f"  {v:<8} p50 {_f(s.p50_ms[v], '.1f'):>6} ms  p99 {_f(s.p99_ms[v], '.1f'):>6} ms  "
            f"cost/1k {'n/a' if cost is None else f'${cost:.6f}'}"
        )
    lines.append(f"projected saving at 100 % student: {'n/a' if s.saving is None else f'{s.saving:.0%}'}")
    lines.append(f"controller: {s.message[:110]}")
    return "\n".join(lines)


def _accuracy_line(s: Sample) -> str:
    """Online accuracy per variant, the paired counts and the accuracy gate's difference."""
    online = "  ".join(f"{v} {_f(s.online_accuracy[v])} (n={s.labelled[v]})" for v in VARIANTS)
    p, a = s.paired, s.accuracy
    difference = (
        "n/a" if a["estimate"] is None else f"{a['estimate']:+.3f} [{_f(a['lower'], '+.3f')}, {_f(a['upper'], '+.3f')}]"
    )
    return (
        f"labels: accuracy {online}   paired: only student {p['only_student']}, only teacher {p['only_teacher']} "
        f"of {sum(p.values())}   student - teacher {difference}"
    )


def _f(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)
