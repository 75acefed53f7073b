"""Reliability benchmark: the fault drills of serving/drills.py, longer and at a higher rate.

Each scenario deploys its own application (teacher + the compression benchmark's best student,
rollout controller, router), holds a steady open-loop rate through the router and injects one
real fault: a stage walk with a manual weight on the way, the student / teacher / controller /
a router replica killed, the state store made full, a second controller opening the same store
(a RayService upgrade). It counts every failed answer. `--only NAME` reruns some scenarios and
keeps the others' last results.

Writes bench/results/reliability.json ({"scenarios": [{name, requests, failed,
rollback_latency_s, resume_s, ...}]}) and the README's bench:reliability table. Targets
(issue 6): 0 failed requests for transitions and for a killed student, teacher or
controller; a killed router loses only what was in flight on it; weight 0 within 1 s of the
student's first failure; the controller resumes at the same stage with its event log intact;
(issue 11) two controllers on one store: 0 failed, 0 events lost, the old one fenced; on a
two-node cluster started with Ray's CLI (serving/local_cluster.py): a new student and a new spec
by `serve deploy` with 0 failed and 0 replicas restarted, no client answer from the unvetted new
student, and the student's node killed: 0 failed, weight 0 within 1 s of the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.readme import best_student, replace_section
from compression.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "reliability.json"


def _scenarios() -> list[tuple[str, Callable[..., Any], int, dict[str, Any]]]:
    from serving import drills

    return [
        ("transitions", drills.transitions_under_load, 300, {}),
        ("studentkill", drills.student_killed, drills.HOLD, {}),
        ("teacherkill", drills.teacher_killed, drills.HOLD, {}),
        ("controllerkill", drills.controller_killed, drills.HOLD, {}),
        ("routerkill", drills.router_killed, drills.HOLD, {"routers": 2}),
        ("storefull", drills.store_full, 300, {}),
        ("twocontrollers", drills.second_controller, drills.HOLD, {}),
    ]


def _cluster_scenarios() -> list[tuple[str, Callable[..., Any]]]:
    """Drills on a two-node cluster started with Ray's CLI, in this order on one cluster (the
    last one kills the worker node)."""
    from serving import drills

    return [
        ("studentswap", drills.student_swapped_by_serve_deploy),
        ("specchange", drills.spec_changed_by_serve_deploy),
        ("nodekill", drills.student_node_killed),
    ]


def run_on_cluster(args: argparse.Namespace, names: set[str]) -> list[dict[str, Any]]:
    """The cluster drills, each with its own load generator, on one LocalCluster."""
    from serving.drills import HOLD, Drill, drill_spec
    from serving.local_cluster import LocalCluster, serve_config

    registry = Registry(args.registry)
    teacher, student, other = (registry.get(ref).id for ref in (args.teacher, args.student, args.other_student))
    texts, token = _texts(), os.environ.setdefault("KDCANARY_ADMIN_TOKEN", secrets.token_urlsafe(24))
    rows = []
    with tempfile.TemporaryDirectory() as folder, LocalCluster(Path(folder), token) as cluster:
        state = Path(folder) / "state"
        cluster.serve_deploy(serve_config(cluster, registry.root, state, teacher, student, drill_spec(HOLD)), "first")
        cluster.wait_running()
        for name, drill in _cluster_scenarios():
            if name not in names:
                continue
            with Drill(cluster.http_url, "kdcanary", token, texts, args.rate) as d:
                result = drill(d, cluster, other) if name == "studentswap" else drill(d, cluster)
            rows.append(result.model_dump() | {"student": args.student, "nodes": 2})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray
    from ray import serve

    from rollout.spec import RolloutSpec
    from serving.app import AppArgs, app_builder
    from serving.config import Resources, RouterConfig
    from serving.drills import Drill, drill_spec

    registry = Registry(args.registry)
    teacher, student = registry.get(args.teacher).id, registry.get(args.student).id
    texts = _texts()
    token = os.environ.setdefault("KDCANARY_ADMIN_TOKEN", secrets.token_urlsafe(24))
    rows = []
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for name, drill, min_requests, extra in _scenarios():
            if args.only and name not in args.only:
                continue
            with tempfile.TemporaryDirectory() as state:
                app = AppArgs(
                    teacher_id=teacher, student_id=student, registry=registry.root,
                    teacher=Resources(num_cpus=0.5), student=Resources(num_cpus=0.5),
                    router=Resources(num_cpus=0.2, num_replicas=extra.get("routers", 1), max_ongoing_requests=256),
                    router_settings=RouterConfig(student_timeout_s=0.5),
                    rollout=RolloutSpec.from_mapping(drill_spec(min_requests)), state_dir=Path(state),
                )  # fmt: skip
                serve.run(app_builder(app), name=name, route_prefix=f"/{name}")
                url = f"http://127.0.0.1:{args.port}/{name}"
                with Drill(url, name, token, texts, args.rate) as d:
                    result = drill(d)
                serve.delete(name)
            rows.append(result.model_dump() | {"student": args.student})  # which bundle it ran on
            print(json.dumps(rows[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _texts() -> list[str]:
    from compression.data import _read_rotten_tomatoes

    return [t.strip()[:400] for t in random.Random(5).sample(_read_rotten_tomatoes()[0], 2000)]


def _update_readme(rows: list[dict[str, Any]], rate: float) -> None:
    lines = [
        f"Open-loop load at {rate:g} requests/s through the router; one real fault per scenario.",
        "",
        "| scenario | requests | failed | rollback latency s | resume s | events lost | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        latency, resume, lost = (
            "" if r.get(k) is None else r[k] for k in ("rollback_latency_s", "resume_s", "events_lost")
        )
        extra = {"replicas restarted": r.get("replicas_restarted"), "unvetted answers": r.get("unvetted_answers")}
        notes = "; ".join([r["notes"], *(f"{k} {v}" for k, v in extra.items() if v is not None)])
        where = [f"student {r['student']}"] if r.get("student") else []
        where += [f"{r['nodes']} nodes"] if r.get("nodes") else []
        notes += f" ({', '.join(where)})" if where else ""
        lines.append(f"| {r['name']} | {r['requests']} | {r['failed']} | {latency} | {resume} | {lost} | {notes} |")
    replace_section("reliability", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    registry = Path(os.environ.get("KDCANARY_BENCH_REGISTRY", ROOT / "bench" / ".registry"))
    parser.add_argument("--registry", type=Path, default=registry)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default=None, help="default: compression benchmark's best student")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second through the router")
    parser.add_argument("--port", type=int, default=8472)
    parser.add_argument("--other-student", default=None, help="swapped in by serve deploy; default: its parent")
    names = [name for name, *_ in _scenarios()] + [name for name, _ in _cluster_scenarios()]
    parser.add_argument(
        "--only", action="append", choices=names, help="run this scenario and keep the others' last results"
    )
    args = parser.parse_args()
    args.student = args.student or best_student()
    args.other_student = args.other_student or _parent(args.registry, args.student)
    chosen = set(args.only or names)
    fresh = run(args) if chosen - {name for name, _ in _cluster_scenarios()} else []
    fresh += run_on_cluster(args, chosen)
    rows = _merged(fresh) if args.only else fresh
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rate_per_s": args.rate, "scenarios": rows}, indent=2) + "\n")
    _update_readme(rows, args.rate)


def _parent(registry: Path, student: str) -> str:
    """The student's parent bundle, when that is a student too (the swap drill needs a second one)."""
    chain = Registry(registry).lineage(student)
    if len(chain) < 3:
        raise SystemExit(f"student {student} comes straight from the teacher: name a second one with --other-student")
    return chain[1].id


def _merged(fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last results with `fresh` rows replacing theirs in place (new ones at the end)."""
    kept = json.loads(RESULTS.read_text())["scenarios"] if RESULTS.is_file() else []
    rows = {row["name"]: row for row in kept}
    rows.update((row["name"], row) for row in fresh)  # a dict keeps first-insertion order
    return list(rows.values())


if __name__ == "__main__":
    main()
