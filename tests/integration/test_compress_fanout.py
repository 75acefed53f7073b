"""A recipe's students side by side on a real two-node Ray cluster (serving/local_cluster.py:
`ray start --head` and a worker, one CPU each, on 127.0.0.1) build exactly what one process
builds: the same bundle ids (hashes of the files), stage keys and accuracy figures.

Both runs go through `kdcanary compress`, once `--in-process` and once `--address` the cluster,
each into a registry of its own. The driver builds the teacher the same way in both (`build_teacher`,
before any fan-out), so the second registry starts with the first one's teacher bundle and none of
its logits: on Ray the teacher's logits are computed in shards, then the students' chains run. The
recipe is small (300 snippets, one epoch) and trains on one thread, as its chains ask for one CPU
each; its two students' chains run at once, one per node.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from compression.registry import Registry
from serving.local_cluster import BIN, LocalCluster

LAX = {"min_agreement": 0.0, "max_accuracy_drop": 1.0}
RECIPE = {
    "name": "fanout",
    "seed": 5,
    "data": {"max_examples": 300},
    "preprocessing": {"max_length": 32},
    "teacher": {"fine_tune": {"epochs": 1, "learning_rate": 8.0e-5}},
    "students": [
        {
            "name": "l2",
            "architecture": {"kind": "layers", "layers": [0, 5]},
            "distill": {"epochs": 1, "learning_rate": 2.0e-4},
            "quantize": {"mode": "dynamic"},
            "tolerances": {"distill": LAX, "quantize": LAX},
        },
        {
            "name": "bag",
            "architecture": {"kind": "bag_of_embeddings", "hidden_size": 64},
            "distill": {"epochs": 1, "learning_rate": 2.0e-3},
            "quantize": {"mode": "static"},
            "tolerances": {"distill": LAX, "quantize": LAX},
        },
    ],
    "measure": {"threads": 1, "runs": 3},
    "compute": {"threads": 1},
}


def compress(recipe: Path, registry: Path, *where: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(BIN / "kdcanary"), "compress", str(recipe), "--registry", str(registry), *where],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def built(registry: Path) -> dict[str, tuple[str, str, float]]:
    """name -> (bundle id, stage key, test accuracy)."""
    return {
        b.manifest.name: (b.id, b.manifest.stage_key, b.manifest.metrics.test_accuracy)
        for b in Registry(registry).bundles()
    }


def test_students_fanned_out_on_two_nodes_build_the_same_bundles(tmp_path: Path) -> None:
    recipe = tmp_path / "fanout.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    alone = compress(recipe, tmp_path / "one-process", "--in-process")
    assert "  distill l2 1/8" in alone and "  quantize" in alone  # progress in a log too, where tqdm draws nothing
    teacher = Registry(tmp_path / "one-process").get("teacher")
    shutil.copytree(teacher.path, Registry(tmp_path / "on-ray").models / teacher.id)
    with LocalCluster(tmp_path, admin_token="unused") as cluster:
        out = compress(recipe, tmp_path / "on-ray", f"--address=127.0.0.1:{cluster.gcs_port}", env=cluster.env)
        tasks: list[dict[str, Any]] = cluster.api("/api/v0/tasks?limit=1000&detail=true")["data"]["result"]["result"]
    one, fanned = built(tmp_path / "one-process"), built(tmp_path / "on-ray")
    assert set(one) == {"teacher", "l2", "l2-int8", "bag", "bag-int8"}
    assert fanned == one
    ran_on = {t["node_id"] for t in tasks if t["func_or_class_name"].endswith("_student_chain")}
    assert len(ran_on) == 2, tasks  # one chain per node, at once
    assert any(t["func_or_class_name"].endswith("_logits_shard") for t in tasks)  # the teacher's logits too
    assert "l2: quantize" in out and "bag: done" in out  # each student's progress, on the terminal
