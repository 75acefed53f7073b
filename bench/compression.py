"""Compression benchmark: run recipes/full.yaml, then time every model of that run in this one
process (same machine state, same threads) and compare the best student with the teacher.

Writes bench/results/compression.json and the README's compression table.
Target (issue 2): best student vs the FP32 teacher in ONNX Runtime: >= 4x lower batch-1 p50,
>= 4x smaller on disk, at most 1.5 points lower test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.readme import replace_section
from compression.data import load_corpus
from compression.onnx_runtime import measure_latency
from compression.pipeline import compress
from compression.recipe import load_recipe
from compression.registry import Bundle, Registry
from compression.runtime import session
from compression.text import encode, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "compression.json"
THREADS = 1
B1_RUNS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "full.yaml")
    parser.add_argument(
        "--registry", type=Path, default=Path(os.environ.get("KDCANARY_BENCH_REGISTRY", ROOT / "bench" / ".registry"))
    )
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    summary = compress(recipe, Registry(args.registry))
    corpus = load_corpus(recipe.data, recipe.seed)
    tokenizer = load_tokenizer(summary.teacher.path / "tokenizer")
    models = []
    for bundle in summary.bundles:
        test = encode(tokenizer, corpus.test.texts, bundle.manifest.preprocessing.max_length)
        latency = measure_latency(session(bundle.model_path, THREADS), test, THREADS, B1_RUNS)
        models.append(_row(bundle, latency.model_dump()))
    result = {"threads": THREADS, "recipe": recipe.name, "models": models, "target": _against_target(models)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _update_readme(result)
    print(json.dumps(result["target"], indent=2))


def _row(bundle: Bundle, latency: dict[str, float]) -> dict[str, object]:
    m = bundle.manifest
    return {
        "id": m.id, "name": m.name, "role": m.role, "stage": m.stage, "precision": m.precision,
        "test_accuracy": round(m.metrics.test_accuracy, 4),
        "latency_ms": {k: round(latency[k], 3) for k in ("b1_p50", "b1_p99", "b32_p50")},
        "size_bytes": m.metrics.size_bytes, "params": m.metrics.params,
    }  # fmt: skip


def _against_target(models: list[dict]) -> dict[str, object]:  # type: ignore[type-arg]
    teacher = next(m for m in models if m["role"] == "teacher")
    rows = []
    for m in (m for m in models if m["role"] == "student"):
        rows.append({
            "name": m["name"],
            "latency_ratio": round(teacher["latency_ms"]["b1_p50"] / m["latency_ms"]["b1_p50"], 2),
            "size_ratio": round(teacher["size_bytes"] / m["size_bytes"], 2),
            "accuracy_gap_points": round(100 * (teacher["test_accuracy"] - m["test_accuracy"]), 2),
        })  # fmt: skip
    meets = [r for r in rows if r["latency_ratio"] >= 4 and r["size_ratio"] >= 4 and r["accuracy_gap_points"] <= 1.5]
    fast_small = [r for r in rows if r["latency_ratio"] >= 4 and r["size_ratio"] >= 4] or rows
    best = min(meets or fast_small, key=lambda r: r["accuracy_gap_points"])
    return {"best_student": best, "met": bool(meets), "teacher_test_accuracy": teacher["test_accuracy"]}


def _update_readme(result: dict) -> None:  # type: ignore[type-arg]
    lines = [
        f"Recipe `{result['recipe']}`, ONNX Runtime on CPU, {result['threads']} thread, all models timed in one run.\n",
        "| model | stage | precision | test acc | b1 p50 ms | b1 p99 ms | b32 p50 ms | size MB | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        lat = m["latency_ms"]
        lines.append(
            f"| {m['name']} | {m['stage']} | {m['precision']} | {m['test_accuracy']:.3f} | {lat['b1_p50']:.2f} | "
            f"{lat['b1_p99']:.2f} | {lat['b32_p50']:.1f} | {m['size_bytes'] / 1e6:.1f} | {m['params'] / 1e6:.2f}M |"
        )
    best = result["target"]["best_student"]
    lines.append(
        f"\nBest student `{best['name']}`: {best['latency_ratio']}x lower batch-1 p50, {best['size_ratio']}x smaller, "
        f"{best['accuracy_gap_points']} points below the teacher (target: 4x, 4x, <= 1.5) — "
        f"{'met' if result['target']['met'] else 'not met'}."
    )
    replace_section("compression", "\n".join(lines))


if __name__ == "__main__":
    main()
