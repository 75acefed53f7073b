"""A real two-node Ray cluster started with Ray's own CLI, as an operator runs one, for
compression first and then for serving (one cluster for both: a cluster's start and its idle
daemons take CPU from the two cores the whole suite shares).

serving/local_cluster.py starts `ray start --head` and a worker (every node on 127.0.0.1, one
CPU each, Ray's token authentication on).

Compression: a recipe's students side by side on the cluster build exactly what one process
builds: the same bundle ids (hashes of the files), stage keys and accuracy figures. Both runs go
through `kdcanary compress`, once `--in-process` and once `--address` the cluster, each into a
registry of its own. The driver builds the teacher the same way in both (`build_teacher`, before
any fan-out), so the second registry starts with the first one's teacher bundle and none of its
logits: on Ray the teacher's logits are computed in shards, then the students' chains run. The
recipe is small (300 snippets, one epoch) and trains on one thread, as its chains ask for one CPU
each; its two students' chains run at once, one per node.

Serving: deploy/serve_config.yaml goes on with `serve deploy`: teacher, router and controller on
the head, the student on the worker. Under one steady load, in order, the drills of
serving/drills.py (which bench/reliability.py runs for its figures):

1. `serve deploy` with another student bundle while the old one is live at 25 %: no replica of
   any deployment restarts, a fresh rollout for the new pair is begun (started on its own: the
   old one was) in its shadow stage, and no client gets an answer from the new student;
2. `serve deploy` with a changed spec: the controller adopts it in place, no replica restarts;
3. `serve deploy` scales the live student from 2 replicas to 1: the stopped one drains its lane;
4. (here only) Prometheus, on Ray's own service-discovery file, scrapes both nodes and sees the
   teacher's metrics from one and the student's from the other;
5. the worker node is killed whole with the new student live: the rollout rolls back to weight 0.

No client request fails in any of them. How fast the rollback comes is a benchmark figure
(`student_node_killed` in bench/results/reliability.json), not asserted here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_install import ensure_prometheus
from prometheus_run import running_prometheus
from rollout_admin import ADMIN_TOKEN

from compression.registry import Registry
from rollout.status import Phase
from serving import drills
from serving.drills import HOLD, Drill, drill_spec
from serving.local_cluster import BIN, SERVE_CONFIG, LocalCluster, serve_config, wait_until

PROMETHEUS_YML = SERVE_CONFIG.parent / "prometheus" / "prometheus.yml"
REVIEWS = ["a warm, funny film", "dull and far too long", "the cast is wonderful", "a mess from start to end"]
RATE_PER_S = 10.0
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


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), ADMIN_TOKEN) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster(nodes: LocalCluster, serving_bundles: Any, tmp_path_factory: pytest.TempPathFactory) -> LocalCluster:
    """The nodes with kdcanary deployed on them (after the compression test, whose chains take a
    whole CPU on each node)."""
    config = serve_config(
        nodes, serving_bundles.registry, tmp_path_factory.mktemp("state"),
        serving_bundles.teacher_id, serving_bundles.student_id, drill_spec(HOLD),
    )  # fmt: skip
    nodes.serve_deploy(config, "first")
    nodes.wait_running()
    return nodes


@pytest.fixture(scope="module")
def drill(cluster: LocalCluster) -> Iterator[Drill]:
    """One steady load for the whole module: each drill counts every failure since it began."""
    with Drill(cluster.http_url, "kdcanary", ADMIN_TOKEN, REVIEWS, RATE_PER_S) as drill:
        yield drill


def test_students_fanned_out_on_two_nodes_build_the_same_bundles(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    recipe = tmp_path / "fanout.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    alone = compress(recipe, tmp_path / "one-process", "--in-process")
    assert "  distill l2 1/8" in alone and "  quantize" in alone  # progress in a log too, where tqdm draws nothing
    teacher = Registry(tmp_path / "one-process").get("teacher")
    shutil.copytree(teacher.path, Registry(tmp_path / "on-ray").models / teacher.id)
    nodes: LocalCluster = request.getfixturevalue("nodes")  # started only now: idle nodes cost CPU too
    out = compress(recipe, tmp_path / "on-ray", f"--address=127.0.0.1:{nodes.gcs_port}", env=nodes.env)
    tasks: list[dict[str, Any]] = nodes.api("/api/v0/tasks?limit=1000&detail=true")["data"]["result"]["result"]
    one, fanned = built(tmp_path / "one-process"), built(tmp_path / "on-ray")
    assert set(one) == {"teacher", "l2", "l2-int8", "bag", "bag-int8"}
    assert fanned == one
    ran_on = {t["node_id"] for t in tasks if t["func_or_class_name"].endswith("_student_chain")}
    assert len(ran_on) == 2, tasks  # one chain per node, at once
    assert any(t["func_or_class_name"].endswith("_logits_shard") for t in tasks)  # the teacher's logits too
    assert "l2: quantize" in out and "bag: done" in out  # each student's progress, on the terminal


def test_teacher_and_student_run_on_different_nodes(cluster: LocalCluster, drill: Drill, serving_bundles: Any) -> None:
    nodes = {name: {r["node_id"] for r in replicas} for name, replicas in cluster.replicas().items()}
    assert nodes["teacher"] == nodes["router"] == {cluster.node_ids["head"]}
    assert nodes["student"] == {cluster.node_ids["worker"]}
    view = drill.wait(lambda v: v.routing.student_id == serving_bundles.student_id, 60)  # the models named it
    assert view.routing.teacher_id == serving_bundles.teacher_id and view.phase is Phase.PENDING


def test_a_new_student_bundle_swaps_in_place_and_begins_a_fresh_rollout(
    cluster: LocalCluster, drill: Drill, serving_bundles: Any
) -> None:
    new = serving_bundles.other_student_id
    result = drills.student_swapped_by_serve_deploy(drill, cluster, new)
    assert (result.failed, result.replicas_restarted, result.unvetted_answers) == (0, 0, 0), result
    view = drill.admin.status()
    assert (view.routing.student_id, view.phase, view.stage_index) == (new, Phase.PROGRESSING, 0)
    (started,) = [e for e in drill.admin.events(limit=1000) if e.action == "start" and e.actor == "kdcanary"]
    assert serving_bundles.student_id in started.reason  # it names the pair it replaced


def test_a_changed_spec_is_adopted_in_place(cluster: LocalCluster, drill: Drill) -> None:
    result = drills.spec_changed_by_serve_deploy(drill, cluster)
    assert (result.failed, result.replicas_restarted) == (0, 0), result
    assert "same stage and weight: True" in result.notes


def test_a_student_scaled_down_drains_its_lane_and_fails_no_request(cluster: LocalCluster, drill: Drill) -> None:
    result = drills.student_scaled_down_by_serve_deploy(drill, cluster)
    assert (result.failed, result.replicas_restarted) == (0, 0), result
    assert len(cluster.replica_ids()["student"]) == 1


def test_prometheus_finds_both_nodes_through_rays_service_discovery_file(
    cluster: LocalCluster, drill: Drill, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"] |= {"scrape_interval": "2s", "scrape_timeout": "2s"}
    config.pop("rule_files")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    job["file_sd_configs"] = [{"files": [str(cluster.service_discovery_file)], "refresh_interval": "2s"}]
    by_node = 'count by (instance, variant) (ray_kdcanary_model_inputs_total{application="kdcanary"})'
    with running_prometheus(ensure_prometheus(), config, tmp_path_factory.mktemp("prometheus")) as prometheus:

        def seen() -> set[tuple[str, str]]:
            answer = prometheus.query(by_node)["data"]["result"]
            return {(series["metric"]["instance"], series["metric"]["variant"]) for series in answer}

        wait_until(lambda: len(seen()) == 2, 120, "model metrics from both variants")
        (teacher_node, _), (student_node, _) = sorted(seen(), key=lambda pair: pair[1] != "teacher")
        assert teacher_node != student_node
        assert len(prometheus.query('up{job="ray"} == 1')["data"]["result"]) >= 2
        # The dashboard's own per-variant panel shows both (a rate: once two scrapes hold each).
        panel = _panel_query("Compute seconds / s by variant").replace("$application", "kdcanary")
        panel = panel.replace("$__rate_interval", "1m")

        def panel_variants() -> set[str]:
            return {series["metric"]["variant"] for series in prometheus.query(panel)["data"]["result"]}

        wait_until(lambda: panel_variants() == {"teacher", "student"}, 60, "the compute panel's two variants")


def test_the_student_node_killed_under_load_fails_no_request_and_rolls_back(
    cluster: LocalCluster, drill: Drill
) -> None:
    result = drills.student_node_killed(drill, cluster)
    assert result.failed == 0, result
    assert drill.admin.status().routing.weight == 0.0


def _panel_query(title: str) -> str:
    dashboard = json.loads((SERVE_CONFIG.parent / "grafana" / "dashboards" / "kdcanary.json").read_text())
    (panel,) = [panel for panel in dashboard["panels"] if panel.get("title") == title]
    (target,) = panel["targets"]
    return str(target["expr"])
