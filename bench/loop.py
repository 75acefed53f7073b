"""The loop, measured: what the canary saw distils the next student.

Usage: python -m bench.loop [--logged N] [--held-out 1000] [--replicas 3] [--no-write]

Round 1 distils students (the tiny recipe's `minilm-l2` architecture, distillation only, three
copies seeded apart by name) from 4,000 labelled snippets, without the plot sentences. The first
is served with its teacher on real Ray Serve (the shipped application, the same code as
`kdcanary serve`), a rollout held in the shadow stage with the disagreement log on, keeping every
compared input (`agreeing: 1.0`: the disagreements and the traffic they came from), and the plot
sentences are sent through the router (all but the held-out ones, unless `--logged` says fewer);
the log is exported with the typed admin client, as `kdcanary rollout disagreements --out` does.
Round 2 distils the same students with the export added as transfer text (labelled by the
teacher's logits; the teacher is reused: its key covers only the labelled splits). Every student
is scored on `--held-out` other plot sentences, never served or logged: the share whose top-1
answer differs from the teacher's (ONNX Runtime, through serving's Classifier), and the
test-split accuracy its manifest records; a round's figure is its students' mean.

Why 4,000 labelled snippets, not the whole corpus: the log helps in proportion to the share of
the distillation set it is. Beside the whole labelled corpus (10,202 snippets to train on) the
4,748 logged sentences moved round 2 by 11 % (0.206 -> 0.183, one student a round, commit
f04796a); beside 1,800, by the figure in loop.json. A team's live traffic outnumbers its labels,
so the benchmark takes the second case and says so.

Why agreements too: a log of disagreements alone leans one way (a student that calls too much
positive disagrees mostly on the teacher's negatives), and a student distilled on it alone
overcorrects: with 287 logged disagreements alone, round 2 disagreed more than round 1
(0.163 -> 0.177, commit 8c3f493). The report keeps both counts.

Target: round 2's disagreement rate >= 20 % lower than round 1's (relative), test accuracy not
lower by more than 0.5 points. Writes bench/results/loop.json and the README's bench:loop table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.readme import ROOT, replace_section
from compression.data import SENTENCE_END, _read_rotten_tomatoes
from compression.pipeline import compress
from compression.recipe import Recipe, load_recipe
from compression.registry import Bundle, Registry
from serving.local_cluster import free_port, wait_until
from serving.router import VERSION_HEADER

RESULTS = ROOT / "bench" / "results" / "loop.json"
STUDENT = "minilm-l2"
REPLICAS = 3  # students per round, seeded apart by name: their spread shows beside the effect
# Fewer labels than logged traffic, as when a team's live traffic outnumbers its labelled set:
# 4,000 snippets, 1,800 to train on and a 1,800-snippet test split (one answer is 0.06 points,
# fine enough for the 0.5-point bound). Four epochs: the validation accuracy still rose at two.
LABELLED, TEST_FRACTION, EPOCHS = 4000, 0.45, 4
TARGETS = {"relative_reduction": 0.20, "max_accuracy_drop": 0.005}


def plot_sentences() -> list[str]:
    """The corpus's plot synopses as sentences, in corpus order (no recipe labels them)."""
    plots = _read_rotten_tomatoes()[3]
    return list(dict.fromkeys(s.strip() for plot in plots for s in SENTENCE_END.split(plot) if 20 <= len(s) <= 400))


def replica_names(replicas: int) -> list[str]:
    """`minilm-l2`, `minilm-l2-seed1`, ...: each chain seeds torch and its batch order from its name."""
    return [STUDENT] + [f"{STUDENT}-seed{i}" for i in range(1, replicas)]


def round_recipe(transfer: list[Path], replicas: int = REPLICAS) -> Recipe:
    """The tiny recipe on `LABELLED` snippets, with `replicas` copies of one student,
    distillation only (`EPOCHS`), and `transfer` as its only transfer text."""
    tiny = load_recipe(ROOT / "recipes" / "tiny.yaml").model_dump(mode="json")
    (student,) = [s for s in tiny["students"] if s["name"] == STUDENT]
    student |= {"prune": None, "quantize": None, "distill": student["distill"] | {"epochs": EPOCHS}}
    tiny["data"] |= {"max_examples": LABELLED, "test_fraction": TEST_FRACTION}
    tiny["data"]["transfer"] = {"plot_sentences": False, "paths": [str(path) for path in transfer]}
    tiny["students"] = [student | {"name": name} for name in replica_names(replicas)]
    tiny["name"] = "loop"
    return Recipe.model_validate(tiny)


def distil(registry: Registry, transfer: list[Path], replicas: int) -> tuple[Bundle, list[Bundle]]:
    """(teacher, the round's students) of one round."""
    summary = compress(round_recipe(transfer, replicas), registry)
    return summary.teacher, [summary.students[name][0] for name in replica_names(replicas)]


def serve_and_log(teacher: Bundle, student: Bundle, registry: Registry, texts: list[str], out: Path) -> int:
    """Serve the pair with the disagreement log on, send `texts` (each one compared), export the log."""
    import ray
    from ray import serve

    from rollout.disagreements import LoggedDisagreement
    from rollout.spec import RolloutSpec
    from serving.admin import ADMIN
    from serving.admin_client import AdminClient
    from serving.app import AppArgs, app_builder
    from serving.config import Resources

    os.environ.setdefault(ADMIN.env, secrets.token_urlsafe(24))
    spec = {
        "stages": [{"weight": 0, "min_requests": 10**9, "min_dwell_s": 0, "shadow_fraction": 1.0}, {"weight": 1}],
        **dict.fromkeys(("agreement", "errors", "latency", "smoke", "watch", "max_stage_duration_s")),
        "disagreements": {"per_batch": 1000, "agreeing": 1.0},
    }
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="kdcanary-loop-state-"))  # the rollout's store, for this round only
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = AppArgs(
            teacher_id=teacher.id, student_id=student.id, registry=registry.root,
            rollout=RolloutSpec.from_mapping(spec), state_dir=state,
            teacher=Resources(num_cpus=0.5), student=Resources(num_cpus=0.5), router=Resources(num_cpus=0.2),
        )  # fmt: skip
        serve.run(app_builder(args), name="loop", route_prefix="/loop")
        url = f"http://127.0.0.1:{port}/loop"
        with AdminClient(url, os.environ[ADMIN.env], actor="bench.loop") as admin:
            admin.start("bench: the loop")
            version = _wait_for_stage_0(admin)
            _send(url, texts, version)
            wait_until(lambda: admin.status().evidence.agreement_compared >= len(texts), 900.0, "every pair compared")
            entries: list[LoggedDisagreement] = []
            after = 0
            while page := admin.disagreements(after, 1000):
                entries, after = entries + page, page[-1].seq
        out.write_text("".join(entry.model_dump_json() + "\n" for entry in entries))
        return len(entries)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(state, ignore_errors=True)


def _wait_for_stage_0(admin: Any) -> int:
    """The routing version of stage 0 (every request compared), once the controller publishes it."""
    deadline = time.monotonic() + 300.0
    while (view := admin.status()).routing.shadow_fraction != 1.0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench.loop: the rollout never reached stage 0: {view.message}")
        time.sleep(0.5)
    return int(view.routing.version)


def _send(url: str, texts: list[str], version: int) -> None:
    """The traffic: one request per sentence, as users send them, once the router holds stage 0's
    routing (its version header says so: a request it answered before would go uncompared)."""
    with httpx.Client(timeout=30.0) as client:
        while int(client.post(f"{url}/v1/predict", json={"inputs": [texts[0]]}).headers[VERSION_HEADER]) < version:
            time.sleep(0.2)
        for text in texts:
            client.post(f"{url}/v1/predict", json={"inputs": [text]}).raise_for_status()


def disagreeing(log: Path) -> int:
    """How many entries of an exported log the two models answered differently."""
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return sum(e["teacher_label"] != e["student_label"] for e in entries)


def top1(bundle: Bundle, registry: Registry, texts: list[str]) -> list[int]:
    """The bundle's answers to `texts` (ONNX Runtime through serving's Classifier, as served)."""
    from serving.classifier import Classifier, load_bundle

    return Classifier(load_bundle(registry.root, bundle.id), 2, "onnx").top1(texts, 64)


def score_round(teacher: Bundle, students: list[Bundle], registry: Registry, texts: list[str]) -> dict[str, Any]:
    """A round's figures, averaged over its students: the share of `texts` whose answer differs
    from the teacher's, and the test accuracy each student's manifest records."""
    reference = top1(teacher, registry, texts)
    differing = [sum(a != b for a, b in zip(top1(s, registry, texts), reference, strict=True)) for s in students]
    rates = [count / len(texts) for count in differing]
    accuracies = [s.manifest.metrics.test_accuracy for s in students]
    return {
        "teacher": teacher.id,
        "students": [s.id for s in students],
        "disagreement_rate": sum(rates) / len(rates),
        "disagreement_rate_each": rates,
        "test_accuracy": sum(accuracies) / len(accuracies),
        "test_accuracy_each": accuracies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logged", type=int, default=None, help="plot sentences served (default: all not held out)")
    parser.add_argument("--held-out", type=int, default=1000, help="other plot sentences the rounds are scored on")
    parser.add_argument("--registry", type=Path, default=Path(tempfile.gettempdir()) / "kdcanary-loop-registry")
    parser.add_argument("--replicas", type=int, default=REPLICAS, help="students per round, seeded apart")
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args()
    started = time.perf_counter()
    sentences = plot_sentences()
    held_out = sentences[-args.held_out :]
    served = sentences[: len(sentences) - args.held_out][: args.logged]
    registry = Registry(args.registry)
    teacher, first = distil(registry, [], args.replicas)
    log = args.registry / "disagreements.jsonl"
    logged = serve_and_log(teacher, first[0], registry, served, log)  # one student is served
    teacher2, second = distil(registry, [log], args.replicas)  # the teacher is reused: same labelled data
    rounds = {
        "round1": score_round(teacher, first, registry, held_out),
        "round2": score_round(teacher2, second, registry, held_out),
    }
    before, after = rounds["round1"]["disagreement_rate"], rounds["round2"]["disagreement_rate"]
    reduction = (before - after) / before if before else 0.0
    drop = rounds["round1"]["test_accuracy"] - rounds["round2"]["test_accuracy"]
    report = {
        **rounds,
        "log_entries": logged,
        "log_disagreements": disagreeing(log),
        "served": len(served),
        "held_out": len(held_out),
        "replicas": args.replicas,
        "relative_reduction": reduction,
        "test_accuracy_drop": drop,
        "targets": {
            "relative_reduction": {"target": TARGETS["relative_reduction"], "met": reduction >= 0.20},
            "test_accuracy_drop": {"target": TARGETS["max_accuracy_drop"], "met": drop <= 0.005},
        },
        "same_teacher": teacher.id == teacher2.id,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    if not args.no_write:
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        replace_section("loop", readme_text(report))


def readme_text(report: dict[str, Any]) -> str:
    met = {key: "met" if value["met"] else "missed" for key, value in report["targets"].items()}
    r1, r2 = report["round1"], report["round2"]
    return "\n".join(
        [
            f"Round 1 served on {report['served']} plot sentences with the log on, keeping every compared input "
            f"({report['log_entries']} entries, {report['log_disagreements']} of them disagreements); round 2 "
            f"distilled with the export; both rounds scored on {report['held_out']} other plot sentences, "
            f"each figure the mean of {report['replicas']} students seeded apart (each one's in brackets):",
            "",
            "| figure | round 1 | round 2 | target |",
            "|---|---|---|---|",
            f"| disagreement with the teacher | {_each(r1, 'disagreement_rate')} | {_each(r2, 'disagreement_rate')} | "
            f"≥ 20 % lower: {report['relative_reduction']:.1%} — {met['relative_reduction']} |",
            f"| test accuracy | {_each(r1, 'test_accuracy')} | {_each(r2, 'test_accuracy')} | "
            f"≤ 0.5 points lower: {_change(report['test_accuracy_drop'])} — {met['test_accuracy_drop']} |",
        ]
    )


def _change(drop: float) -> str:
    """`0.3 points higher` or `0.2 points lower`: round 2's test accuracy against round 1's."""
    return f"{abs(100 * drop):.1f} points {'lower' if drop > 0 else 'higher'}"


def _each(round_: dict[str, Any], figure: str) -> str:
    """`0.183 (0.180, 0.179, 0.190)`: a round's mean and its students' figures."""
    each = ", ".join(f"{value:.3f}" for value in round_[f"{figure}_each"])
    return f"{round_[figure]:.3f} ({each})"


if __name__ == "__main__":
    main()
