"""`kdcanary demo`: the whole product on one machine, from models to a rollout report.

1. compress: teacher and students from the recipe (reused from the registry when built);
2. start a local Ray cluster and Serve, deploy teacher + student behind the router with the
   rollout controller, and send held-out review snippets at a steady rate;
   Half the answers' true labels come back 3 s later through POST /v1/feedback, as a
   product's backend would send them: the live view and the report show online accuracy per
   variant and the paired counts, and the accuracy gate judges them;
3. scenario 1: a good student walks 0 (shadow) -> 5 -> 10 -> 25 -> 50 -> 100 % on evidence;
4. scenario 2: a student exported with a far too short max_length (a real mistake, made by
   the compression module from the recipe) is caught by the agreement gate and rolled back;
5. scenario 3: the distilled student before pruning, whose average agreement clears the
   threshold while it gets one class (the teacher's "negative") wrong far more often, is
   caught by the per-class guard, which names the class and its numbers;
6. a live view while it runs, then a report (markdown + charts) in the output folder, beside
   the compression Pareto report of the models it built.

The rollouts are driven only through the admin API, as an operator would. `realistic`
uses the production-like default stages and gates (slower: many minutes per stage).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compression.registry import Bundle, Registry
from rollout.spec import RolloutSpec, Stage
from rollout.status import SETTLED_PHASES
from rollout.views import StatusView
from serving.admin import ADMIN, FEEDBACK, configured_token
from serving.admin_client import AdminClient, FeedbackClient
from serving.demo.load import LabelFeed, LoadGenerator
from serving.demo.report import ScenarioResult, write_report
from serving.demo.view import Sample, render, sample, scrape_costs
from serving.local_cluster import free_port

COSTS_EVERY_S = 10.0  # Ray's default metrics export interval (the demo's ray.init keeps it)


class DemoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: Path = Path("recipes/tiny.yaml")
    registry: Path
    out: Path = Path("out/demo")
    good: str = "minilm-l2-pruned-int8"
    bad: str = "minilm-l2-short-int8"
    one_class: str = "bag"  # agrees ~0.78 overall, ~0.67 on "negative" (tiny recipe)
    rate: float = Field(default=20.0, gt=0.0, le=500.0)
    realistic: bool = False
    max_scenario_s: float = Field(default=420.0, gt=0.0)
    port: int = 8000
    live: bool = True  # redraw in place (a terminal); False prints a line every few seconds


def demo_spec(realistic: bool) -> RolloutSpec:
    """The demo's stages and gates: the defaults when `realistic`, else a fast spec.

    Fast: 200 requests in shadow, then 50 a stage and a few seconds each (the agreement evidence
    is pooled over stages: the stage-0 bound is what lets the first stage advance, about 200
    comparisons at the good student's 0.85); agreement >= 0.78 and >= 0.77 in each class.
    On held-out snippets the good student (the pruned INT8) agrees with its teacher 0.85 of the
    time (0.81 on "negative"), the short-max_length one 0.69 (0.64 on "negative") and the bag
    baseline 0.78 (0.67 on "negative"). The thresholds leave each scenario a margin of several
    points: at 0.80 the good student's bound hovered at the threshold for minutes (a stage
    advances only while the bound is above it), and at 0.75 per class the bag's rollback needed
    about 1,300 comparisons; error margin 0.1; no latency gate (a p99 bound needs about a thousand samples per stage,
    minutes at the demo's rate: `realistic` keeps it). Accuracy on the labels that come back
    guards (it may veto, agreement decides): students 3 points less accurate than the teacher
    are accepted (margin 0.05), and proving that within 5 points takes thousands of labels.
    """
    if realistic:
        return RolloutSpec()
    stages = [
        Stage(weight=0.0, min_requests=200, min_dwell_s=5, shadow_fraction=1.0),
        *(Stage(weight=w, min_requests=50, min_dwell_s=5, shadow_fraction=0.5) for w in (0.05, 0.1, 0.25, 0.5)),
        Stage(weight=1.0, min_requests=50, min_dwell_s=5, shadow_fraction=0.25),
    ]
    return RolloutSpec.model_validate(
        {
            "stages": [s.model_dump() for s in stages],
            "agreement": {"threshold": 0.78, "alpha": 0.05},
            "agreement_by_class": {"threshold": 0.77, "alpha": 0.05, "classes": 2},
            "accuracy": {"margin": 0.05, "mode": "guards"},
            "errors": {"margin": 0.1, "alpha": 0.05},
            "latency": None,
            "tick_interval_s": 0.5,
        }
    )


def run_demo(options: DemoOptions) -> int:
    """The CLI's entry: models, a local Ray + Serve, both scenarios, the report, shutdown."""
    import ray
    from ray import serve

    from compression.pipeline import compress
    from compression.recipe import load_recipe

    registry = Registry(options.registry)
    summary = compress(load_recipe(options.recipe), registry)
    print(f"models: {len(summary.bundles)} bundles in {registry.root}", flush=True)
    for credential in (ADMIN, FEEDBACK):
        if not configured_token(credential=credential):
            os.environ[credential.env] = secrets.token_urlsafe(24)  # Ray workers inherit it
    metrics_port = free_port()
    ray.init(
        address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": options.port})
        http_url, metrics_url = f"http://127.0.0.1:{options.port}", f"http://127.0.0.1:{metrics_port}/metrics"
        results = run_scenarios(options, registry, http_url, metrics_url)
    finally:
        serve.shutdown()
        ray.shutdown()
    from compression.report import write_report as write_pareto

    report = write_report(results, options.out)
    pareto, _ = write_pareto(summary.bundles, options.out)
    print(f"\nkdcanary demo: report in {report} (charts beside it); the models' trade-offs in {pareto}")
    for r in results:
        print(f"  {r.title}: {r.student} -> {r.phase} after {r.seconds:.0f} s")
    expected = [("good", "watching"), ("bad", "rolled_back"), ("class", "rolled_back")]
    caught_by_class = "agreement by class: class '" in (results[-1].rollback_reason or "")
    return 0 if [(r.name, r.phase) for r in results] == expected and caught_by_class else 1


def run_scenarios(options: DemoOptions, registry: Registry, http_url: str, metrics_url: str) -> list[ScenarioResult]:
    """Both scenarios on a running Serve instance at `http_url` (Ray's metrics at `metrics_url`)."""
    from compression.data import held_out
    from compression.recipe import load_recipe

    recipe = load_recipe(options.recipe)
    examples: list[tuple[str, str | None]] = [
        (text.strip()[:1000], label) for text, label in held_out(recipe.data, recipe.seed)
    ]
    teacher = registry.get("teacher")
    scenarios = [
        ("good", "Scenario 1: a good student", registry.get(options.good)),
        ("bad", "Scenario 2: a student exported with max_length 8", registry.get(options.bad)),
        ("class", "Scenario 3: a student that fails one class", registry.get(options.one_class)),
    ]
    return [
        _scenario(name, title, teacher, student, options, registry, examples, http_url, metrics_url)
        for name, title, student in scenarios
    ]


def _scenario(
    name: str, title: str, teacher: Bundle, student: Bundle, options: DemoOptions, registry: Registry,
    examples: list[tuple[str, str | None]], http_url: str, metrics_url: str,
) -> ScenarioResult:  # fmt: skip
    from ray import serve

    state = options.out / "state" / name
    shutil.rmtree(state, ignore_errors=True)  # each demo run starts its rollouts afresh
    serve.run(_application(teacher, student, registry, state, options.realistic), name=name, route_prefix=f"/{name}")
    admin = AdminClient(f"{http_url}/{name}", configured_token(), actor="kdcanary-demo")
    labels = LabelFeed(FeedbackClient(f"{http_url}/{name}", configured_token(credential=FEEDBACK)))
    load = LoadGenerator(f"{http_url}/{name}/v1/predict", examples, options.rate, labels=labels).start()
    try:
        time.sleep(2.0)  # the teacher's evidence starts flowing before the rollout does
        admin.start(title)
        samples, status, started = _watch(title, admin, load, metrics_url, name, options)
        events = admin.events(limit=1000)
    finally:
        load.stop()
        admin.close()
        serve.delete(name)
    return ScenarioResult(
        name=name, title=title, student=student.manifest.name, student_id=student.id, phase=status.phase.value,
        seconds=time.monotonic() - started, rollback_reason=status.rollback_reason, samples=samples,
        events=events, watch=next((g.message for g in status.gates if g.name == "watch"), None),
    )  # fmt: skip


def _watch(
    title: str, admin: AdminClient, load: LoadGenerator, metrics_url: str, app: str, options: DemoOptions
) -> tuple[list[Sample], StatusView, float]:
    """Sample once a second until the rollout ends (plus a few seconds) or time runs out; costs
    every COSTS_EVERY_S, as often as Ray exports them (reading Ray's metrics endpoint is not free:
    its agent renders about a megabyte each time)."""
    started, costs, ended_at = time.monotonic(), scrape_costs(metrics_url, app), None
    costs_at = 0.0
    samples: list[Sample] = []
    show = _live_printer() if options.live else _line_printer()
    while True:
        status = admin.status()
        now = time.monotonic() - started
        if now - costs_at >= COSTS_EVERY_S:
            costs, costs_at = scrape_costs(metrics_url, app), now
        samples.append(sample(now, status, load.window(10.0), costs))
        show(render(title, samples[-1]))
        if status.phase in SETTLED_PHASES and ended_at is None:
            ended_at = now
        if (ended_at is not None and now - ended_at > 3.0) or now > options.max_scenario_s:
            return samples, status, started
        time.sleep(1.0)


def _application(teacher: Bundle, student: Bundle, registry: Registry, state: Path, realistic: bool) -> Any:
    from serving.app import AppArgs, app_builder
    from serving.config import Resources

    args = AppArgs(
        teacher_id=teacher.id,
        student_id=student.id,
        registry=registry.root,
        teacher=Resources(num_cpus=0.5),
        student=Resources(num_cpus=0.5),
        router=Resources(num_cpus=0.2, max_ongoing_requests=256),
        rollout=demo_spec(realistic),
        state_dir=state,
    )
    return app_builder(args)


def _live_printer() -> Callable[[str], None]:
    drawn = 0

    def show(text: str) -> None:
        nonlocal drawn
        if drawn:
            sys.stdout.write(f"\x1b[{drawn}F\x1b[J")  # back to the panel's first line, clear below
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        drawn = text.count("\n") + 1

    return show


def _line_printer(every_s: float = 5.0) -> Callable[[str], None]:
    last = 0.0

    def show(text: str) -> None:
        nonlocal last
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            print(text + "\n", flush=True)

    return show
