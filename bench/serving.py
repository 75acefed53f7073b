"""Serving benchmark: what the canary router costs on top of Ray Serve, measured on loopback.

Scenarios (one Ray session, one application at a time, same student bundle throughout):

    direct               the student ModelDeployment answering HTTP itself (Serve proxy -> model)
    router_w1            proxy -> router -> student (weight 1.0, no shadow)
    router_w05           weight 0.5: half the requests go to the teacher
    router_w05_shadow10  weight 0.5, 10 % of requests also asked of the other model
    floor                one uvicorn process running ONNX Runtime in the handler (no Ray at all)

each at concurrency 1 and 16, one short review per request. Writes bench/results/serving.json
({"scenarios": [{name, concurrency, requests, errors, throughput_rps, p50_ms, p99_ms}]}) and, when
the README has the bench:serving markers, its table. Target (issue 3): router_w1 keeps >= 85 % of
direct's throughput and adds <= 2 ms p50 at concurrency 1.

Ray runs with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (set it on the cluster too; `--ray-defaults` to
compare): on 2 cores it takes the router's extra hop from about +4.5 ms to about +2 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.readme import replace_section
from compression.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serving.json"
PAYLOAD = {"inputs": ["a moving, beautifully acted film that stays with you"]}
CONCURRENCY = (1, 16)
ROUTED = (("router_w1", 1.0, 0.0), ("router_w05", 0.5, 0.0), ("router_w05_shadow10", 0.5, 0.1))


async def _load(url: str, concurrency: int, requests: int, warmup: int) -> dict[str, Any]:
    """`requests` POSTs from `concurrency` workers; latencies from send to full answer."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        for _ in range(warmup):
            await client.post(url, json=PAYLOAD)
        latencies: list[float] = []
        errors = 0
        remaining = requests

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    ok = (await client.post(url, json=PAYLOAD)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(requests / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def _measure(name: str, url: str, counts: dict[int, int], warmup: int) -> list[dict[str, Any]]:
    rows = []
    for concurrency in CONCURRENCY:
        row = {"name": name, **asyncio.run(_load(url, concurrency, counts[concurrency], warmup))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _ray_scenarios(args: argparse.Namespace, counts: dict[int, int]) -> list[dict[str, Any]]:
    import ray
    from ray import serve

    from rollout.evidence import Variant
    from serving.app import MODEL, AppArgs, app_builder
    from serving.config import ModelConfig, Resources

    model, router = Resources(num_cpus=1.0), Resources(num_cpus=0.5, max_ongoing_requests=256)
    base = {"teacher_id": args.teacher, "student_id": args.student, "registry": args.registry}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        url = f"http://127.0.0.1:{args.port}"
        config = ModelConfig(registry=args.registry.resolve(), bundle=args.student, variant=Variant.STUDENT)
        serve.run(MODEL.options(**model.options("student", 16)).bind(config), name="direct", route_prefix="/direct")
        rows += _measure("direct", f"{url}/direct", counts, args.warmup)
        serve.delete("direct")
        for name, weight, shadow in (
            ("router_w1", 1.0, 0.0),
            ("router_w05", 0.5, 0.0),
            ("router_w05_shadow10", 0.5, 0.1),
        ):
            app_args = AppArgs(
                **base, initial_weight=weight, shadow_fraction=shadow, teacher=model, student=model, router=router
            )
            serve.run(app_builder(app_args), name=name, route_prefix=f"/{name}")
            rows += _measure(name, f"{url}/{name}/v1/predict", counts, args.warmup)
            serve.delete(name)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _floor(args: argparse.Namespace, counts: dict[int, int]) -> list[dict[str, Any]]:
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
        return _measure("floor", url, counts, args.warmup)
    finally:
        server.terminate()
        server.wait(timeout=30)


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


def _against_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["name"], r["concurrency"]): r for r in rows}
    out: dict[str, Any] = {}
    for c in CONCURRENCY:
        direct, routed = by[("direct", c)], by[("router_w1", c)]
        out[f"c{c}"] = {
            "added_p50_ms": round(routed["p50_ms"] - direct["p50_ms"], 2),
            "throughput_ratio": round(routed["throughput_rps"] / direct["throughput_rps"], 3),
        }
    out["met"] = out["c1"]["added_p50_ms"] <= 2.0 and all(out[f"c{c}"]["throughput_ratio"] >= 0.85 for c in CONCURRENCY)
    return out


def _update_readme(rows: list[dict[str, Any]], target: dict[str, Any]) -> None:
    lines = [
        "| scenario | concurrency | requests | errors | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['throughput_rps']} | "
        f"{r['p50_ms']} | {r['p99_ms']} |"
        for r in rows
    ]
    c1, c16 = target["c1"], target["c16"]
    lines.append(
        f"\nRouter at weight 1 vs direct: +{c1['added_p50_ms']} ms p50 and {c1['throughput_ratio']:.0%} throughput at "
        f"concurrency 1, {c16['throughput_ratio']:.0%} at 16 (target: <= 2 ms, >= 85 %) — "
        f"{'met' if target['met'] else 'not met'}."
    )
    replace_section("serving", "\n".join(lines))


def _default_student() -> str:
    compression = ROOT / "bench" / "results" / "compression.json"
    if compression.is_file():
        return str(json.loads(compression.read_text())["target"]["best_student"]["name"])
    return "minilm-l2-pruned-int8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    registry = Path(os.environ.get("KDCANARY_BENCH_REGISTRY", ROOT / "bench" / ".registry"))
    parser.add_argument("--registry", type=Path, default=registry)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default=None, help="default: compression benchmark's best student")
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--requests", type=int, default=400, help="requests at concurrency 1 (x4 at 16)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--ray-defaults", action="store_true", help="leave RAY_SERVE_THROUGHPUT_OPTIMIZED unset (Ray's defaults)"
    )
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.ray_defaults:  # user code on the replica's own loop, gRPC handles, no stderr logs
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    args.student = args.student or _default_student()
    if args.floor_server:
        _serve_floor(args)
        return
    registry_ = Registry(args.registry)
    args.teacher, args.student = registry_.get(args.teacher).id, registry_.get(args.student).id
    counts = {1: args.requests, 16: 4 * args.requests}
    rows = _ray_scenarios(args, counts) + _floor(args, counts)
    target = _against_target(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"scenarios": rows}, indent=2) + "\n")
    _update_readme(rows, target)
    print(json.dumps(target, indent=2))


if __name__ == "__main__":
    main()
