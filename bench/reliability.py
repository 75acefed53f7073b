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
student, and the student's node killed: 0 failed, weight 0 within 1 s of the kill; sent by
`hey`, twice the measured capacity for 60 s with only 429/503 + Retry-After refusals beyond the
admitted, and a 20-minute soak with every replica's resident memory within 10 % after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.debian import ensure_tools
from bench.hey import PAYLOAD, HeyProcess, run_hey
from bench.readme import best_student, replace_section
from compression.registry import Registry
from serving.admin_client import AdminClient

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
        ("scaledown", drills.student_scaled_down_by_serve_deploy),
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


DEPLOYMENTS = ("teacher", "student", "controller", "router")
LOAD_SCENARIOS = ("overload", "soak")  # sent by hey: a Python client on the measured cores would not reach 2x


def run_under_hey(args: argparse.Namespace, names: set[str]) -> list[dict[str, Any]]:
    """Overload at twice the measured capacity, and a long soak at a steady rate, each on its own
    application on a local Ray session, with a rollout live at its first stage throughout."""
    import ray
    from ray import serve

    (hey,) = ensure_tools("hey", ["hey"])
    token = os.environ.setdefault("KDCANARY_ADMIN_TOKEN", secrets.token_urlsafe(24))
    url = f"http://127.0.0.1:{args.port}/load"
    rows = []
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for name in [n for n in LOAD_SCENARIOS if n in names]:
            with tempfile.TemporaryDirectory() as state, AdminClient(url, token, actor="bench") as admin:
                _serve_load_app(args, Path(state), admit_per_s=None)
                admin.start("bench: a live rollout under load")
                before = admin.promote(reason="bench: the student live")
                predict = url + "/v1/predict"
                figures = (
                    _overload(hey, predict, args, Path(state)) if name == "overload" else _soak(hey, predict, args)
                )
                after = admin.status()
                serve.delete("load")
            same = (after.phase, after.stage_index, after.weight) == (before.phase, before.stage_index, before.weight)
            figures["notes"] += f"; rollout state intact: {same and after.store.healthy}"
            rows.append(figures | {"student": args.student})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _serve_load_app(args: argparse.Namespace, state: Path, admit_per_s: float | None) -> None:
    """The application at /load; called again with other router settings, it changes them in place."""
    from ray import serve

    from rollout.spec import RolloutSpec
    from serving.app import AppArgs, app_builder
    from serving.config import Resources, RouterConfig
    from serving.drills import HOLD, drill_spec

    app = AppArgs(
        teacher_id=args.teacher, student_id=args.student, registry=args.registry,
        teacher=Resources(num_cpus=0.5), student=Resources(num_cpus=0.5),
        router=Resources(num_cpus=0.5, max_ongoing_requests=256),
        router_settings=RouterConfig(max_requests_per_s=admit_per_s, student_timeout_s=0.5),
        rollout=RolloutSpec.from_mapping(drill_spec(HOLD)), state_dir=state,
    )  # fmt: skip
    serve.run(app_builder(app), name="load", route_prefix="/load")


def _overload(hey: Path, url: str, args: argparse.Namespace, state: Path, seconds: int = 60) -> dict[str, Any]:
    """Capacity with admission off (hey at concurrency 16), then the router admits that many per
    second (an in-place router update) and hey offers twice as many for `seconds`: the admitted
    are answered, the rest refused with 429 or 503 and Retry-After, nothing else."""
    capacity = run_hey(hey, url, ["-c", "16", "-z", "10s"]).throughput_rps
    _serve_load_app(args, state, admit_per_s=capacity)
    workers = 128
    offered = HeyProcess(hey, url, ["-c", str(workers), "-q", f"{2 * capacity / workers:.2f}", "-z", f"{seconds}s"])
    refusals = _refusals_with_retry_after(url, offered)
    run = offered.wait()
    shed = run.codes.get(429, 0) + run.codes.get(503, 0)
    notes = (
        f"capacity {capacity:.0f} req/s, offered {2 * capacity:.0f} for {seconds} s: {run.throughput_rps:.0f} req/s "
        f"came back; codes {dict(sorted(run.codes.items()))}; sampled refusals with Retry-After: {refusals}"
    )
    return {"name": "overload_2x", "requests": run.requests, "failed": run.requests - run.codes.get(200, 0) - shed,
            "shed": shed, "notes": notes}  # fmt: skip


def _refusals_with_retry_after(url: str, offered: HeyProcess) -> str:
    """While hey overloads the router, a few requests of our own: do its refusals say when to retry?"""
    refused = with_header = 0
    with httpx.Client(timeout=30) as client:
        while offered.running:
            response = client.post(url, json=PAYLOAD)
            if response.status_code in (429, 503):
                refused += 1
                with_header += "retry-after" in response.headers
            time.sleep(0.2)
    return f"{with_header}/{refused}"


def _soak(hey: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """`args.soak_s` seconds at `args.soak_rate` requests/s: every kdcanary replica's resident
    memory, sampled every 5 s, against its size when the warm-up (a fifth of the run, at most
    2 minutes) ends."""
    from serving.drills import replica_pids

    pids = {f"{deployment}:{pid}": pid for deployment in DEPLOYMENTS for pid in replica_pids("load", deployment)}
    workers = 4
    rate = f"{args.soak_rate / workers:.2f}"
    load = HeyProcess(hey, url, ["-c", str(workers), "-q", rate, "-z", f"{args.soak_s}s"])
    warmup_s, started = min(120.0, args.soak_s / 5), time.monotonic()
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
    while load.running:
        for name, pid in pids.items():
            samples[name].append((time.monotonic() - started, _rss_bytes(pid)))
        time.sleep(5.0)
    run = load.wait()
    growth = {name: _growth(points, warmup_s) for name, points in samples.items()}
    worst = max(growth, key=lambda name: growth[name])
    return {
        "name": "soak",
        "requests": run.requests,
        "failed": run.requests - run.codes.get(200, 0),
        "duration_s": args.soak_s,
        "rss_growth_ratio": round(growth[worst], 3),
        "notes": f"{args.soak_rate:g} req/s; largest growth {worst}; "
        + ", ".join(f"{name} {ratio:.3f}" for name, ratio in sorted(growth.items())),
    }


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _growth(points: list[tuple[float, int]], warmup_s: float) -> float:
    """Largest resident size after the warm-up over the size when it ended."""
    after = [rss for at, rss in points if at >= warmup_s]
    return max(after) / after[0] if after and after[0] else float("nan")


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
        f"The fault drills under open-loop load at {rate:g} requests/s through the router, one real fault each; "
        "overload_2x and soak are sent by `hey`.",
        "",
        "| scenario | requests | failed | shed | rollback latency s | resume s | events lost | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        latency, resume, lost = (
            "" if r.get(k) is None else r[k] for k in ("rollback_latency_s", "resume_s", "events_lost")
        )
        extra = {
            "replicas restarted": r.get("replicas_restarted"),
            "unvetted answers": r.get("unvetted_answers"),
            "seconds": r.get("duration_s"),
            "RSS growth ratio": r.get("rss_growth_ratio"),
        }
        notes = "; ".join([r["notes"], *(f"{k} {v}" for k, v in extra.items() if v is not None)])
        where = [f"student {r['student']}"] if r.get("student") else []
        where += [f"{r['nodes']} nodes"] if r.get("nodes") else []
        notes += f" ({', '.join(where)})" if where else ""
        lines.append(
            f"| {r['name']} | {r['requests']} | {r['failed']} | {r.get('shed', 0)} | {latency} | {resume} | {lost} "
            f"| {notes} |"
        )
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
    parser.add_argument("--soak-s", type=int, default=1200, help="the soak's length (issue 11: 20 minutes)")
    parser.add_argument("--soak-rate", type=float, default=50.0, help="the soak's steady requests per second")
    cluster = [name for name, _ in _cluster_scenarios()]
    names = [name for name, *_ in _scenarios()] + cluster + list(LOAD_SCENARIOS)
    parser.add_argument(
        "--only", action="append", choices=names, help="run this scenario and keep the others' last results"
    )
    args = parser.parse_args()
    args.student = args.student or best_student()
    args.other_student = args.other_student or _parent(args.registry, args.student)
    chosen = set(args.only or names)
    fresh = run(args) if chosen - set(cluster) - set(LOAD_SCENARIOS) else []
    fresh += run_on_cluster(args, chosen) if chosen & set(cluster) else []
    fresh += run_under_hey(args, chosen) if chosen & set(LOAD_SCENARIOS) else []
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
