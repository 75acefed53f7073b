"""Compression benchmark: run a recipe, then time every model of that run in this one process
(same machine state, same threads) and compare the best student with the teacher.

Usage: python -m bench.compression --recipe recipes/base.yaml   (make bench-base)
       python -m bench.compression --recipe recipes/full.yaml   (make bench)

Writes bench/results/compression.json for the base recipe (compression-<name>.json for any
other) and the README's table for it. Targets: the best student against the FP32 teacher in ONNX
Runtime, batch-1 p50 and size on disk as ratios, test accuracy as points below the teacher:
base (issue 14) >= 10x, >= 10x, <= 1.0; full (issue 2) >= 4x, >= 4x, <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.readme import replace_section
from compression import progress
from compression.data import load_corpus
from compression.onnx_runtime import measure_latency, predict
from compression.pipeline import compress
from compression.preprocessing import TextEncoder
from compression.recipe import Recipe, load_recipe
from compression.registry import Bundle, Registry
from compression.runtime import session
from compression.text import encode_with

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
THREADS = 1
B1_RUNS = 300
BOOTSTRAP_ROUNDS = 4000
TARGETS = {"base": (10.0, 10.0, 1.0), "full": (4.0, 4.0, 1.5)}  # latency x, size x, points
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "base.yaml")
    parser.add_argument(
        "--registry", type=Path, default=Path(os.environ.get("KDCANARY_BENCH_REGISTRY", ROOT / "bench" / ".registry"))
    )
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    registry = Registry(args.registry)
    from_nothing = not registry.bundles()  # else built_s counts only the stages not yet registered
    if not sys.stdout.isatty():  # a log of a long run: tqdm draws on terminals only
        progress.listen(progress.lines(lambda line: print(line, flush=True)))
    started = time.perf_counter()
    summary = compress(recipe, registry)
    built_s = round(time.perf_counter() - started, 1)
    test = load_corpus(recipe.data, recipe.seed).test
    models, correct = [], {}
    for bundle in summary.bundles:  # each in its own tokens, as it is served
        preprocessing = bundle.manifest.preprocessing
        encoder = TextEncoder.from_dir(bundle.path / preprocessing.tokenizer, preprocessing.max_length)
        sess, encoded = session(bundle.model_path, THREADS), encode_with(encoder, test.texts)
        latency = measure_latency(sess, encoded, THREADS, B1_RUNS)
        correct[bundle.manifest.name] = predict(sess, encoded).argmax(1) == test.labels
        models.append(_row(bundle, latency.model_dump()))
    result = {
        "recipe": recipe.name, "teacher": _teacher_name(recipe), "threads": THREADS, "cpu": _cpu(), "built_s": built_s,
        "built_from_nothing": from_nothing, "models": models, "breaches": summary.breaches,
        "target": _against_target(models, TARGETS.get(recipe.name, TARGETS["full"]), correct),
    }  # fmt: skip
    name = "compression.json" if recipe.name == "base" else f"compression-{recipe.name}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    _update_readme(result)
    print(json.dumps(result["target"], indent=2))


def _teacher_name(recipe: Recipe) -> str:
    teacher = recipe.teacher
    return str(teacher.path.name if teacher.path is not None else teacher.packaged)


def _cpu() -> dict[str, object]:
    """What the latency figures were measured on: the CPU, the vector instructions ONNX Runtime
    can use on it (INT8 speed-ups depend on VNNI/AMX), and the runtime's version."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return {
        "model": model or platform.processor(), "machine": platform.machine(), "cores": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags], "onnxruntime": ort.__version__,
    }  # fmt: skip


def _row(bundle: Bundle, latency: dict[str, float]) -> dict[str, object]:
    m = bundle.manifest
    return {
        "id": m.id, "name": m.name, "role": m.role, "stage": m.stage, "precision": m.precision,
        "test_accuracy": round(m.metrics.test_accuracy, 4),
        "latency_ms": {k: round(latency[k], 3) for k in ("b1_p50", "b1_p99", "b32_p50")},
        "size_bytes": m.metrics.size_bytes, "params": m.metrics.params,
    }  # fmt: skip


def _against_target(
    models: list[dict],  # type: ignore[type-arg]
    target: tuple[float, float, float],
    correct: dict[str, np.ndarray],
) -> dict[str, object]:
    """The best student against the targets; `correct` holds each model's right/wrong per test text."""
    latency_x, size_x, points = target
    teacher = next(m for m in models if m["role"] == "teacher")
    rows = []
    for m in (m for m in models if m["role"] == "student"):
        rows.append({
            "name": m["name"],
            "latency_ratio": round(teacher["latency_ms"]["b1_p50"] / m["latency_ms"]["b1_p50"], 2),
            "size_ratio": round(teacher["size_bytes"] / m["size_bytes"], 2),
            "accuracy_gap_points": round(100 * (teacher["test_accuracy"] - m["test_accuracy"]), 2),
        })  # fmt: skip
    fast_small = [r for r in rows if r["latency_ratio"] >= latency_x and r["size_ratio"] >= size_x]
    meets = [r for r in fast_small if r["accuracy_gap_points"] <= points]
    best = min(meets or fast_small or rows, key=lambda r: r["accuracy_gap_points"])
    best["accuracy_gap_ci95_points"] = paired_gap_interval(correct[teacher["name"]], correct[best["name"]])
    return {
        "best_student": best, "met": bool(meets), "teacher_test_accuracy": teacher["test_accuracy"],
        "targets": {"latency_ratio": latency_x, "size_ratio": size_x, "max_accuracy_gap_points": points},
    }  # fmt: skip


def paired_gap_interval(teacher_correct: np.ndarray, student_correct: np.ndarray) -> list[float]:
    """95% paired-bootstrap interval of the accuracy gap in points: both models answer the same
    test texts, so texts are resampled together and the gap's spread is not the two accuracies'
    spreads added (about a point each on ~1k texts)."""
    gap = teacher_correct.astype(np.float64) - student_correct.astype(np.float64)
    draws = np.random.default_rng(0).integers(0, len(gap), size=(BOOTSTRAP_ROUNDS, len(gap)))
    low, high = np.percentile(100 * gap[draws].mean(axis=1), [2.5, 97.5])
    return [round(float(low), 2), round(float(high), 2)]


def _update_readme(result: dict) -> None:  # type: ignore[type-arg]
    cpu = result["cpu"]
    lines = [
        f"Recipe `{result['recipe']}` (teacher `{result['teacher']}`), ONNX Runtime {cpu['onnxruntime']} on CPU, "
        f"{result['threads']} thread, all models timed in one run on {cpu['model']} "
        f"({', '.join(cpu['isa']) or 'no AVX2'}).\n",
        "| model | stage | precision | test acc | b1 p50 ms | b1 p99 ms | b32 p50 ms | size MB | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        lat = m["latency_ms"]
        lines.append(
            f"| {m['name']} | {m['stage']} | {m['precision']} | {m['test_accuracy']:.3f} | {lat['b1_p50']:.2f} | "
            f"{lat['b1_p99']:.2f} | {lat['b32_p50']:.1f} | {m['size_bytes'] / 1e6:.1f} | {m['params'] / 1e6:.2f}M |"
        )
    best, target = result["target"]["best_student"], result["target"]["targets"]
    low, high = best["accuracy_gap_ci95_points"]
    lines.append(
        f"\nBest student `{best['name']}`: {best['latency_ratio']}x lower batch-1 p50, {best['size_ratio']}x smaller, "
        f"{best['accuracy_gap_points']} points below the teacher (95% paired-bootstrap interval {low} to {high}; "
        f"target: {target['latency_ratio']:g}x, "
        f"{target['size_ratio']:g}x, <= {target['max_accuracy_gap_points']:g}) — "
        f"{'met' if result['target']['met'] else 'not met'}."
    )
    for name, breach in result.get("breaches", {}).items():
        lines.append(f"\nStudent `{name}` stopped at a tolerance: {breach}")
    built = f"{result['built_s'] / 60:.0f} minutes"
    lines.append(
        f"\nBuilt in {built} from an empty registry on {result['cpu']['cores']} cores."
        if result.get("built_from_nothing")
        else f"\nThis run reused registered stages: its {built} are not a build from nothing."
    )
    replace_section(
        "compression" if result["recipe"] == "base" else f"compression-{result['recipe']}", "\n".join(lines)
    )


if __name__ == "__main__":
    main()
