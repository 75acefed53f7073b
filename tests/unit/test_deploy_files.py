"""The files under deploy/ without a cluster: promtool on the Prometheus config and rules (and
the alerts' and cost rules' logic on synthetic series), the Grafana dashboard's structure and
provisioning, the compose file's mounts, and the RayService against deploy/serve_config.yaml.

promtool comes from Debian's `prometheus` package, installed by tests/prometheus_install.py
when missing (the integration test runs the same files against a live Prometheus).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_install import PrometheusTools, ensure_prometheus
from ray.serve.schema import ServeDeploySchema

from rollout.spec import RolloutSpec
from serving.app import AppArgs
from serving.config import ModelUserConfig, RouterConfig

DEPLOY = Path(__file__).parents[2] / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kdcanary.json"
COMPOSE = DEPLOY / "docker-compose.yml"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = DEPLOY / "serve_config.yaml"
PANEL_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRICS_PORT = 8080


@pytest.fixture(scope="session")
def promtool() -> Path:
    tools: PrometheusTools = ensure_prometheus()
    return tools.promtool


def run_promtool(promtool: Path, *args: str | Path) -> str:
    done = subprocess.run([str(promtool), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- Prometheus ---------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_its_rules(promtool: Path) -> None:
    out = run_promtool(promtool, "check", "config", PROMETHEUS_YML)
    assert "SUCCESS" in out and "rules.yml" in out  # the config loads the rules next to it
    run_promtool(promtool, "check", "rules", RULES_YML)


def test_every_alert_says_what_it_means() -> None:
    alerts = [rule for group in load_yaml(RULES_YML)["groups"] for rule in group["rules"] if "alert" in rule]
    expected = {"KdcanaryRolledBack", "KdcanaryAgreementBelowThreshold", "KdcanaryControllerDown"}
    expected |= {"KdcanaryControllerNotTicking", "KdcanaryStudentErrorRate", "KdcanaryFailoverSpike"}
    assert expected <= {alert["alert"] for alert in alerts}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
    readme = (DEPLOY / "README.md").read_text()
    assert all(alert["alert"] in readme for alert in alerts), "deploy/README.md lists every alert"


def series(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"series": name, "values": value} for name, value in values.items()]


def firing(alert: str, *labels: str) -> dict[str, Any]:
    """A promql test: the alert's expression (its `for` aside) holds for exactly these label sets."""
    expr = next(
        rule["expr"]
        for group in load_yaml(RULES_YML)["groups"]
        for rule in group["rules"]
        if rule.get("alert") == alert
    )
    return {
        "expr": f"count by (application, instance) ({expr})",
        "eval_time": "5m",
        "exp_samples": [{"labels": label, "value": 1} for label in labels],
    }


# 15 s steps, 21 samples = 0..5 min. Apps: ok (healthy), and one per failure.
ALERT_SERIES = {
    'ray_kdcanary_rollout_phase{application="ok",phase="rolled_back"}': "0x20",
    'ray_kdcanary_rollout_phase{application="back",phase="rolled_back"}': "0x10 1x10",
    'ray_kdcanary_rollout_gate_upper{application="ok",gate="agreement",replica="r1"}': "0.99x20",
    'ray_kdcanary_rollout_gate_threshold{application="ok",gate="agreement",replica="r1"}': "0.97x20",
    'ray_kdcanary_rollout_gate_upper{application="low",gate="agreement",replica="r1"}': "0.99x10 0.93x10",
    'ray_kdcanary_rollout_gate_threshold{application="low",gate="agreement",replica="r1"}': "0.97x20",
    'ray_kdcanary_rollout_stage{application="ok"}': "1x20",
    'ray_kdcanary_rollout_stage{application="gone"}': "1x8 stale",  # controller died at 2 min
    'ray_kdcanary_rollout_stage{application="deleted"}': "1x8 stale",  # the whole app went away
    'ray_kdcanary_rollout_decisions_total{application="ok",action="hold"}': "0+4x20",
    'ray_kdcanary_rollout_decisions_total{application="stuck",action="hold"}': "0+4x8 32x12",
    'ray_kdcanary_rollout_decisions_total{application="deleted",action="hold"}': "0+4x8 32x12",  # Ray keeps it
    'ray_kdcanary_rollout_store_healthy{application="ok"}': "1x20",
    'ray_kdcanary_rollout_store_healthy{application="disk"}': "1x10 0x10",
    'ray_kdcanary_rollout_store_fenced{application="ok"}': "0x20",
    'ray_kdcanary_rollout_store_fenced{application="upgraded"}': "0x10 1x10",
    'ray_kdcanary_requests_total{application="ok",variant="student",outcome="ok"}': "0+90x20",
    'ray_kdcanary_requests_total{application="ok",variant="teacher",outcome="ok"}': "0+10x20",
    'ray_serve_application_status{application="ok"}': "6x20",
    'ray_serve_application_status{application="gone"}': "6x20",  # Serve still runs it
    'ray_serve_application_status{application="stuck"}': "6x20",
    'ray_serve_application_status{application="deleted"}': "6x8 stale",
    'ray_kdcanary_requests_total{application="flaky",variant="student",outcome="ok"}': "0+90x20",
    'ray_kdcanary_requests_total{application="flaky",variant="teacher",outcome="failover"}': "0+10x20",
    'ray_kdcanary_failovers_total{application="flaky",reason="error"}': "0+10x20",
    'ray_kdcanary_rollout_gate_upper{application="ok",gate="accuracy",replica="r1"}': "0.02x20",
    'ray_kdcanary_rollout_gate_threshold{application="ok",gate="accuracy",replica="r1"}': "-0.01x20",
    'ray_kdcanary_rollout_gate_upper{application="worse",gate="accuracy",replica="r1"}': "0.02x10 -0.03x10",
    'ray_kdcanary_rollout_gate_threshold{application="worse",gate="accuracy",replica="r1"}': "-0.01x20",
    'ray_kdcanary_feedback_refused_total{application="ok",reason="409",replica="r1"}': "0+5x20",  # retries
    'ray_kdcanary_feedback_refused_total{application="forged",reason="404",replica="r1"}': "0x10 0+3x10",
    'ray_kdcanary_rollout_watch_alarmed{application="ok",stream="agreement",replica="r1"}': "0x20",
    'ray_kdcanary_rollout_watch_alarmed{application="drifted",stream="class:neg",replica="r1"}': "0x10 1x10",
    'ray_kdcanary_rollout_deadline_passed{application="ok",replica="r1"}': "0x20",
    'ray_kdcanary_rollout_deadline_passed{application="slowdata",replica="r1"}': "0x10 1x10",
    'ray_kdcanary_rollout_awaiting_confirmation{application="ok",replica="r1"}': "0x20",
    'ray_kdcanary_rollout_awaiting_confirmation{application="qa",replica="r1"}': "1x20",
    'up{job="ray",instance="node-1:8080"}': "1x20",
    'up{job="ray",instance="node-2:8080"}': "1x10 0x10",
}

# One app at 100 % with a 5 % shadow, per 15 s: 100 requests of one input each, the student
# scores 100 inputs for $0.01 ($0.1 per 1k), the teacher 5 shadow inputs for $0.005 ($1 per 1k).
COST_SERIES = {
    'ray_kdcanary_requests_total{application="c",variant="student",outcome="ok"}': "0+100x20",
    'ray_kdcanary_model_inputs_total{application="c",variant="student"}': "0+100x20",
    'ray_kdcanary_model_inputs_total{application="c",variant="teacher"}': "0+5x20",
    'ray_kdcanary_cost_dollars_total{application="c",variant="student"}': "0+0.01x20",
    'ray_kdcanary_cost_dollars_total{application="c",variant="teacher"}': "0+0.005x20",
    'ray_kdcanary_shadow_comparisons_total{application="c"}': "0+5x20",
    'ray_kdcanary_shadow_agreements_total{application="c"}': "0+4x20",
    'ray_kdcanary_rollout_labelled{application="c",variant="student",replica="r1"}': "0+10x20",
    'ray_kdcanary_rollout_labelled_correct{application="c",variant="student",replica="r1"}': "0+9x20",
    'ray_kdcanary_rollout_labelled{application="c",variant="teacher",replica="r1"}': "0x20",
}


def milli(record: str, expected: dict[str, int]) -> dict[str, Any]:
    """A promql test: the recorded series x 1000, rounded (rate() extrapolation is not exact)."""
    samples = [{"labels": labels, "value": value} for labels, value in expected.items()]
    return {"expr": f"round(1000 * {record})", "eval_time": "5m", "exp_samples": samples}


def test_alerts_and_cost_rules_on_synthetic_series(promtool: Path, tmp_path: Path) -> None:
    app = '{{application="{}"}}'.format
    alerts = [
        firing("KdcanaryRolledBack", app("back")),
        firing("KdcanaryAgreementBelowThreshold", app("low")),
        firing("KdcanaryControllerDown", app("gone")),  # not "deleted": Serve no longer runs it
        firing("KdcanaryControllerNotTicking", app("stuck")),  # not "deleted" either
        firing("KdcanaryStateStoreUnhealthy", app("disk")),
        firing("KdcanaryControllerFenced", app("upgraded")),
        firing("KdcanaryStudentErrorRate", app("flaky")),  # 10 % of its attempts
        firing("KdcanaryFailoverSpike", app("flaky")),  # 10 % of all answers
        firing("KdcanaryRayMetricsDown", '{instance="node-2:8080"}'),
        firing("KdcanaryStudentLessAccurate", app("worse")),
        firing("KdcanaryFeedbackRefused", app("forged")),  # 30 in the last 10 min; repeats do not count
        firing("KdcanaryWatchChangeDetected", app("drifted")),
        firing("KdcanaryStageDeadlinePassed", app("slowdata")),
        firing("KdcanaryAwaitingConfirmation", app("qa")),
    ]
    variant = '{{application="c",variant="{}"}}'.format
    cost = [
        milli("application:kdcanary_cost_dollars_per_1k_requests:rate5m", {app("c"): 150}),
        milli("application:kdcanary_teacher_only_cost_dollars_per_1k_requests:rate5m", {app("c"): 1000}),
        milli("application:kdcanary_saving_dollars_per_1k_requests:rate5m", {app("c"): 850}),
        milli(
            "application_variant:kdcanary_cost_dollars_per_1k_inputs:rate5m",
            {variant("student"): 100, variant("teacher"): 1000},
        ),
        milli("application:kdcanary_student_share:ratio_rate1m", {app("c"): 1000}),
        milli("application:kdcanary_shadow_agreement:ratio_rate5m", {app("c"): 800}),
        milli("application:kdcanary_student_errors:ratio_rate5m", {app("c"): 0}),  # no failover series yet
        milli("application:kdcanary_failovers:ratio_rate2m", {app("c"): 0}),
        milli("application_variant:kdcanary_online_accuracy:ratio", {variant("student"): 900}),  # no teacher label
    ]
    tests = [
        {"interval": "15s", "input_series": series(ALERT_SERIES), "promql_expr_test": alerts},
        {"interval": "15s", "input_series": series(COST_SERIES), "promql_expr_test": cost},
    ]
    spec = tmp_path / "rules_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES_YML)], "evaluation_interval": "15s", "tests": tests}))
    run_promtool(promtool, "test", "rules", spec)


# --- Grafana -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 38
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["application"]["datasource"] == PANEL_DATASOURCE
    # a gauge the controller sets every tick: Ray keeps exporting a deleted application's counters
    # at their last value, so a counter would list applications long gone
    definition = variables["application"]["definition"]
    listed = re.fullmatch(r"label_values\((ray_kdcanary_rollout_\w+), application\)", definition)
    assert listed and not listed[1].endswith("_total"), definition
    assert "${datasource}" not in json.dumps(variables["datasource"])  # no variable refers to itself


def test_every_panel_queries_the_datasource_variable() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == PANEL_DATASOURCE and panel["targets"], title
        assert panel["description"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}, title
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), title
        for target in panel["targets"]:
            assert target["datasource"] == PANEL_DATASOURCE and target["expr"].strip(), title
            assert 'application=~"$application"' in target["expr"], title


def test_dashboard_covers_the_issue_list() -> None:
    board = dashboard()
    text = json.dumps(board)
    titles = " | ".join(panel["title"] for panel in board["panels"]).lower()
    for words in ("traffic split", "requests / s", "errors", "p50 / p99", "agreement", "divergence"):
        assert words in titles, words
    for words in ("cost per 1k requests", "saving", "stage over time", "failovers", "rollbacks", "online accuracy"):
        assert words in titles, words
    rollbacks = next(note for note in board["annotations"]["list"] if note["name"] == "Rollbacks")
    assert "ray_kdcanary_rollout_rollbacks_total" in rollbacks["expr"]
    assert rollbacks["datasource"] == PANEL_DATASOURCE
    assert "$__rate_interval" in text


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder() -> None:
    (source,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "kdcanary.yml")["providers"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- docker compose ----------------------------------------------------------------------------


def test_compose_mounts_the_deploy_files_and_scrapes_the_hosts_ray() -> None:
    compose = load_yaml(COMPOSE)
    prometheus = compose["services"]["prometheus"]
    for volume in prometheus["volumes"] + compose["services"]["grafana"]["volumes"]:
        if volume.startswith("./"):
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    (target_config,) = prometheus["configs"]
    targets = yaml.safe_load(compose["configs"][target_config["source"]]["content"])
    assert targets[0]["targets"] == [f"host.docker.internal:{METRICS_PORT}"]
    (job,) = load_yaml(PROMETHEUS_YML)["scrape_configs"]
    patterns = job["file_sd_configs"][0]["files"]
    mounted = Path(target_config["target"]).relative_to("/etc/prometheus")
    assert any(mounted.match(pattern) for pattern in patterns), (mounted, patterns)


# --- KubeRay -----------------------------------------------------------------------------------


def kuberay() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(RAYSERVICE.read_text())}


def test_rayservice_serves_the_same_application_as_serve_config() -> None:
    serve_config = kuberay()["RayService"]["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str)  # KubeRay takes the Serve config as a YAML string
    assert yaml.safe_load(serve_config) == load_yaml(SERVE_CONFIG)
    schema = ServeDeploySchema.model_validate(yaml.safe_load(serve_config))
    (app,) = schema.applications
    AppArgs.model_validate(app.args)  # the file's arguments are valid
    assert app.import_path == "serving.app:app_builder"


def test_what_an_operator_changes_in_place_is_each_deployments_valid_user_config() -> None:
    (app,) = ServeDeploySchema.model_validate(load_yaml(SERVE_CONFIG)).applications
    user_configs = {deployment.name: deployment.user_config for deployment in app.deployments}
    assert set(user_configs) == {"teacher", "student", "controller", "router"}
    for name in ("teacher", "student"):
        ModelUserConfig.model_validate(user_configs[name])
    RolloutSpec.from_mapping(user_configs["controller"])
    RouterConfig.model_validate(user_configs["router"])
    assert not {"teacher_id", "student_id", "rollout", "router_settings"} & set(app.args)  # args restart all


def test_rayservice_authenticates_ray_and_names_its_upgrade_strategy() -> None:
    spec = kuberay()["RayService"]["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52)  # Ray's token auth
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert "Upgrades and the rollout store" in (DEPLOY / "README.md").read_text()


def ray_pods() -> list[dict[str, Any]]:
    cluster = kuberay()["RayService"]["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_every_ray_pod_exports_metrics_and_mounts_the_shared_volume_and_token() -> None:
    (app,) = load_yaml(SERVE_CONFIG)["applications"]
    volume = kuberay()["PersistentVolumeClaim"]
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"]
    for group in ray_pods():
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_PORT)
        spec = group["template"]["spec"]
        (container,) = spec["containers"]
        assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        }
        data = next(name for name, claim in claims.items() if claim == volume["metadata"]["name"])
        for path in (app["args"]["registry"], app["args"]["state_dir"]):
            assert Path(path).is_relative_to(mounts[data]), path
        env = {variable["name"]: variable["value"] for variable in container["env"]}
        secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
        for variable in ("KDCANARY_ADMIN_TOKEN_FILE", "KDCANARY_FEEDBACK_TOKEN_FILE", "KDCANARY_FORCE_TOKEN_FILE"):
            assert any(Path(env[variable]).parent == Path(mounts[name]) for name in secrets), variable


def test_pod_monitor_scrapes_the_metrics_port_of_every_ray_pod_as_job_ray() -> None:
    monitor = kuberay()["PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for group in ray_pods():
        assert selector.items() <= group["template"]["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "ray"} in endpoint["relabelings"]
