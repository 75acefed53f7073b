"""The demo's two rollouts on the session's Ray cluster: the good student is promoted to
100 % and the short-max_length one is rolled back, and the report says so with charts.

`make demo` runs the same `run_scenarios` behind `run_demo`, which adds the compression
step (the session's tiny registry here) and its own Ray cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.registry import Registry
from serving.demo.report import write_report
from serving.demo.run import DemoOptions, run_scenarios


def test_demo_promotes_the_good_student_and_rolls_back_the_bad_one(
    serve_cluster: Any, serving_bundles: Any, tmp_path: Path
) -> None:
    options = DemoOptions(registry=serving_bundles.registry, out=tmp_path, rate=30.0, live=False)
    results = run_scenarios(
        options, Registry(serving_bundles.registry), serve_cluster.http_url, serve_cluster.metrics_url
    )
    assert [(r.name, r.phase) for r in results] == [("good", "completed"), ("bad", "rolled_back")], [
        (r.name, r.phase, r.samples[-1].message) for r in results
    ]
    good, bad = results
    assert [s.weight_percent for s in good.samples][-1] == 100.0
    assert {e["action"] for e in good.events if e["kind"] == "decision"} >= {"advance", "complete"}
    assert "agreement" in (bad.rollback_reason or "") and max(s.weight_percent for s in bad.samples) == 0.0
    assert any(s.cost_per_1k["student"] for s in good.samples) and any(s.saving for s in good.samples)
    summary = write_report(results, tmp_path / "report")
    text = summary.read_text()
    assert "promoted to 100 %" in text and "rolled back" in text
    assert (tmp_path / "report" / "good.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "bad.png").stat().st_size > 10_000
