"""Serving benchmark: what the canary router costs on top of Ray Serve, measured on loopback.

Scenarios (one Ray session, one application at a time, same student bundle throughout):

    direct               the student ModelDeployment answering HTTP itself (no router)
    router_w1            router -> student (weight 1.0, no shadow), over the models' stream lanes
    router_w1_handle     the same through Serve's DeploymentHandle (`model_transport: handle`)
    router_w05           weight 0.5: half the requests go to the teacher
    router_w05_shadow10  weight 0.5, 10 % of requests also asked of the other model
    floor                one uvicorn process running ONNX Runtime in the handler (no Ray at all)

each at concurrency 1 and 16, one short review per request, sent by `hey` (Debian's, installed
by the benchmark when missing: a Go client, not Python competing for the 2 cores it measures).
The machine is noisy (2 cores, shared), so scenarios are measured in interleaved rounds (the
order rotates each round) and each figure is the median over rounds. Writes
bench/results/serving.json ({"scenarios": [{name, ingress, transport, client, concurrency,
requests, errors, throughput_rps, p50_ms, p99_ms, rounds, runs}], "via_proxy": [...],
"target": {...}, "target_via_proxy": {...}}) and the README's bench:serving table.

Targets (issue 11), router_w1 vs direct: through the proxy, <= +1.0 ms p50 at concurrency 1 and
>= 95 % of direct's throughput at 16; at the replica port >= 85 % at 16. Both transports are
judged, which decides whether the stream lane earns its keep.

Ray runs with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (set it on the cluster too; `--ray-defaults` to
compare). It turns on direct ingress: each application's ingress replica serves HTTP on its own
port (30000-31000, allocated by the Serve controller) for a load balancer to reach, and the Serve
proxy on --port stays up as well. `replica` rows go to the ingress replica's port; `proxy` rows
repeat direct and router_w1 through the proxy (an extra process and hop that both pay).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.debian import ensure_tools
from bench.hey import PAYLOAD, run_hey
from bench.readme import best_student, replace_section
from compression.registry import Registry
from serving.admin import TOKEN_ENV, configured_token
from serving.admin_client import AdminClient
from serving.config import Transport

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serving.json"
CONCURRENCY = (1, 16)
ROUTED: tuple[tuple[str, float, float, Transport], ...] = (  # name, weight, shadow fraction, model transport
    ("router_w1", 1.0, 0.0, "stream"),
    ("router_w1_handle", 1.0, 0.0, "handle"),
    ("router_w05", 0.5, 0.0, "stream"),
    ("router_w05_shadow10", 0.5, 0.1, "stream"),
)
ROUTED_ORDER = ("direct", *(name for name, *_ in ROUTED), "floor")
TRANSPORT = {name: transport for name, _, _, transport in ROUTED}
CLIENT = "hey"


@dataclass(frozen=True)
class Target:
    """One thing to measure: a scenario name, where it is reached through, and its URL."""

    name: str
    ingress: str  # replica (direct ingress) | proxy (Serve's HTTP proxy) | uvicorn (the floor)
    url: str


def _hey(hey: Path, url: str, concurrency: int, requests: int, warmup: int) -> dict[str, Any]:
    """`requests` POSTs from `concurrency` keep-alive connections, after `warmup` unmeasured ones."""
    run_hey(hey, url, ["-c", str(concurrency), "-n", str(max(warmup, concurrency))])
    run = run_hey(hey, url, ["-c", str(concurrency), "-n", str(requests)])
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": requests - run.codes.get(200, 0),  # a request that got no answer has no 200 either
        "throughput_rps": run.throughput_rps,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
    }


# --- deployment ---------------------------------------------------------------------------------


def _ingress_base(app: str, proxy_port: int) -> str:
    """Where a load balancer sends `app`'s traffic: its ingress replica's own HTTP port under
    direct ingress, else the Serve proxy (the controller's target groups say which)."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None, "serve.start() first"
    controller = client._controller  # private: Serve has no public call for the target groups
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        groups = ray.get(controller.get_target_groups.remote(app))
        ports = [t.port for g in groups if g.protocol == RequestProtocol.HTTP for t in g.targets]
        if ports:  # the replica binds the proxy's host (127.0.0.1 here), not the node address listed
            return f"http://127.0.0.1:{ports[0]}"
        time.sleep(0.5)
    return f"http://127.0.0.1:{proxy_port}"


def _applications(args: argparse.Namespace) -> dict[str, tuple[Any, str, float | None]]:
    """Scenario name -> (Serve application, path under its route prefix, the student share to
    pin on its rollout controller; None for the model alone)."""
    from rollout.evidence import Variant
    from rollout.spec import fixed_share_spec
    from serving.app import MODEL, AppArgs, app_builder
    from serving.config import ModelConfig, ModelUserConfig, Resources, RouterConfig

    model, router = Resources(num_cpus=1.0), Resources(num_cpus=0.5, max_ongoing_requests=256)
    config = ModelConfig(registry=args.registry.resolve(), variant=Variant.STUDENT)
    bundle = ModelUserConfig(bundle=args.student).model_dump()
    apps: dict[str, tuple[Any, str, float | None]] = {
        "direct": (MODEL.options(**model.options("student", 16), user_config=bundle).bind(config), "", None)
    }
    for name, weight, shadow, transport in ROUTED:
        app_args = AppArgs(
            teacher_id=args.teacher,
            student_id=args.student,
            registry=args.registry,
            router_settings=RouterConfig(model_transport=transport),
            rollout=fixed_share_spec(shadow),
            teacher=model,
            student=model,
            router=router,
        )
        apps[name] = (app_builder(app_args), "/v1/predict", weight)
    return apps


# --- measurement --------------------------------------------------------------------------------

Runs = dict[tuple[str, str, int], list[dict[str, Any]]]
PROXIED = ("direct", "router_w1", "router_w1_handle")  # also measured through the Serve proxy


def _targets(name: str, path: str, proxy_port: int) -> list[Target]:
    """Where to reach a deployed scenario: its ingress replica, and the proxy if that differs."""
    proxy = f"http://127.0.0.1:{proxy_port}/{name}{path}"
    replica = f"{_ingress_base(name, proxy_port)}/{name}{path}"
    return [Target(name, "replica", replica)] + (
        [Target(name, "proxy", proxy)] if replica != proxy and name in PROXIED else []
    )


def _measure(targets: list[Target], args: argparse.Namespace, counts: dict[int, int], runs: Runs, r: int) -> None:
    for target in targets:
        for concurrency in CONCURRENCY:
            run = _hey(args.hey, target.url, concurrency, counts[concurrency], args.warmup)
            print(json.dumps({"round": r, "name": target.name, "ingress": target.ingress, **run}), flush=True)
            runs.setdefault((target.name, target.ingress, concurrency), []).append(run)


def _rounds(args: argparse.Namespace, floor_url: str, counts: dict[int, int]) -> Runs:
    """Every scenario, `rounds` times, one application deployed at a time (idle applications
    would tax the others' CPU), in an order that rotates each round."""
    from ray import serve

    apps = _applications(args)
    names = [*apps, "floor"]
    runs: Runs = {}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name == "floor":
                _measure([Target("floor", "uvicorn", floor_url)], args, counts, runs, r)
                continue
            application, path, weight = apps[name]
            serve.run(application, name=name, route_prefix=f"/{name}")
            if weight is not None:  # the share is an operator intent; warm-up covers the routers' next poll
                with AdminClient(f"http://127.0.0.1:{args.port}/{name}", configured_token(), actor="bench") as admin:
                    admin.pin(weight, reason="bench: fixed share")
            _measure(_targets(name, path, args.port), args, counts, runs, r)
            serve.delete(name)
    return runs


def _summary(name: str, ingress: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (each round's own p50/p99); errors summed; the rounds kept."""

    def median(key: str) -> float:
        return round(statistics.median(run[key] for run in runs), 2)

    return {
        "name": name,
        "ingress": ingress,
        "transport": TRANSPORT.get(name, "none"),
        "client": CLIENT,
        "concurrency": runs[0]["concurrency"],
        "requests": runs[0]["requests"],
        "errors": sum(run["errors"] for run in runs),
        "throughput_rps": round(median("throughput_rps"), 1),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "rounds": len(runs),
        "runs": [{k: run[k] for k in ("throughput_rps", "p50_ms", "p99_ms")} for run in runs],
    }


@contextlib.contextmanager
def _floor_server(args: argparse.Namespace) -> Iterator[str]:
    """A single uvicorn process with ONNX Runtime in the handler, started and stopped by pid."""
    command = [sys.executable, "-m", "bench.serving", "--floor-server", "--port", str(args.port + 1)]
    command += ["--registry", str(args.registry), "--student", args.student]
    server = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{args.port + 1}/v1/predict"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.post(url, json=PAYLOAD, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("floor server did not come up")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _measure_all(args: argparse.Namespace, counts: dict[int, int]) -> list[dict[str, Any]]:
    import ray
    from ray import serve

    # Direct ingress keeps a deleted ingress replica serving 30 s for load balancers to notice;
    # on loopback there are none, and the next scenario should not share the CPU with it.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(24))  # Ray workers inherit it
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        with _floor_server(args) as floor_url:
            runs = _rounds(args, floor_url, counts)
    finally:
        serve.shutdown()
        ray.shutdown()
    order = [*ROUTED_ORDER]
    keys = sorted(runs, key=lambda k: (k[1] == "proxy", order.index(k[0]), k[2]))
    return [_summary(name, ingress, runs[(name, ingress, c)]) for name, ingress, c in keys]


def _serve_floor(args: argparse.Namespace) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.classifier import Classifier, load_bundle

    classifier = Classifier(load_bundle(args.registry, args.student), threads=1)

    async def predict(request: Request) -> JSONResponse:
        texts = (await request.json())["inputs"]
        probabilities = classifier.score(texts).probabilities
        labels = probabilities.argmax(axis=1).tolist()
        rows = probabilities.astype(np.float64).round(6).tolist()
        predictions = [
            {"label_id": i, "label": classifier.label_names[i], "probabilities": r}
            for i, r in zip(labels, rows, strict=True)
        ]
        return JSONResponse({"predictions": predictions, "variant": "student", "model_id": classifier.bundle.id})

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


# --- report -------------------------------------------------------------------------------------


def _against_target(rows: list[dict[str, Any]], added_p50_ms: float, throughput_ratio: float) -> dict[str, Any]:
    """router_w1 (each transport) vs direct: the added p50 at concurrency 1 and the throughput
    ratio at 16, against the given bounds."""
    by = {(r["name"], r["concurrency"]): r for r in rows}
    out: dict[str, Any] = {"bounds": {"added_p50_ms_c1": added_p50_ms, "throughput_ratio_c16": throughput_ratio}}
    for name in ("router_w1", "router_w1_handle"):
        if (name, 1) not in by:
            continue
        c1 = round(by[(name, 1)]["p50_ms"] - by[("direct", 1)]["p50_ms"], 2)
        c16 = round(by[(name, 16)]["throughput_rps"] / by[("direct", 16)]["throughput_rps"], 3)
        met = c1 <= added_p50_ms and c16 >= throughput_ratio
        out[TRANSPORT[name]] = {"added_p50_ms_c1": c1, "throughput_ratio_c16": c16, "met": met}
    return out


def _verdict(target: dict[str, Any]) -> str:
    bounds = target["bounds"]
    parts = [
        f"{transport}: {t['added_p50_ms_c1']:+} ms p50 at concurrency 1, {t['throughput_ratio_c16']:.0%} of "
        f"direct's throughput at 16 ({'met' if t['met'] else 'not met'})"
        for transport, t in target.items()
        if transport != "bounds"
    ]
    return (
        "; ".join(parts) + f" — target <= {bounds['added_p50_ms_c1']:+} ms at 1, "
        f">= {bounds['throughput_ratio_c16']:.0%} at 16"
    )


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | ingress | transport | concurrency | requests x rounds | errors | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r['name']} | {r['ingress']} | {r['transport']} | {r['concurrency']} | {r['requests']} x {r['rounds']} | "
        f"{r['errors']} | "
        f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} |"
        for r in rows
    ]


def _update_readme(rows: list[dict[str, Any]], proxied: list[dict[str, Any]], result: dict[str, Any]) -> None:
    lines = _table(rows + proxied)
    lines.append(
        f"\nMedians over interleaved rounds, load from `{CLIENT}`, student `{result['student']}`. `replica`: the "
        "ingress replica's own port (direct ingress, where a load balancer sends traffic); `proxy`: through "
        "Ray Serve's HTTP proxy. `transport`: how the router calls the model."
    )
    lines.append(f"\nAt the replica port, router_w1 vs direct: {_verdict(result['target'])}.")
    if "target_via_proxy" in result:
        lines.append(f"Through the proxy: {_verdict(result['target_via_proxy'])}.")
    replace_section("serving", "\n".join(lines))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    registry = Path(os.environ.get("KDCANARY_BENCH_REGISTRY", ROOT / "bench" / ".registry"))
    parser.add_argument("--registry", type=Path, default=registry)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default=None, help="default: compression benchmark's best student")
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--requests", type=int, default=400, help="requests at concurrency 1 (x4 at 16), per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20, help="requests before each measurement")
    parser.add_argument(
        "--ray-defaults", action="store_true", help="leave RAY_SERVE_THROUGHPUT_OPTIMIZED unset (Ray's defaults)"
    )
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    if not args.ray_defaults:  # direct ingress, user code on the replica's own loop, gRPC handles, no stderr logs
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        # Ray 2.60 derives the proxy's transport before that flag turns gRPC on, so the proxy would
        # still call replicas by Ray actor call (about 3 ms slower per request through the proxy).
        os.environ.setdefault("RAY_SERVE_PROXY_USE_GRPC", "1")
    args.student = args.student or best_student()
    if args.floor_server:
        _serve_floor(args)
        return
    registry_ = Registry(args.registry)
    student_name = args.student
    args.teacher, args.student = registry_.get(args.teacher).id, registry_.get(args.student).id
    (args.hey,) = ensure_tools("hey", ["hey"])
    summaries = _measure_all(args, {1: args.requests, 16: 4 * args.requests})
    rows = [r for r in summaries if r["ingress"] != "proxy"]
    proxied = [r for r in summaries if r["ingress"] == "proxy"]
    result: dict[str, Any] = {"student": student_name, "scenarios": rows, "target": _against_target(rows, 2.0, 0.85)}
    if proxied:
        result |= {"via_proxy": proxied, "target_via_proxy": _against_target(proxied, 1.0, 0.95)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _update_readme(rows, proxied, result)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("target")}, indent=2))


if __name__ == "__main__":
    main()
