"""The shipped Prometheus config, rules and Grafana dashboard against a real Prometheus.

Debian's `prometheus` (installed by the session fixture when missing) scrapes the session's
Ray metrics port through deploy/prometheus/prometheus.yml, with only the target (the Ray SD
file becomes a static target), the intervals (scrapes every 5 s, rules every 1 s) and the rule
file's absolute path changed.
Two canaries run real traffic meanwhile:

- `prom-good` is started and paused in its shadow stage before any of its traffic flows, and
  resumed only once Prometheus holds an increase of every shadow counter (comparisons,
  agreements, divergence); then it walks shadow -> 50 -> 100 % on evidence, and the shadow
  comparisons stop (they run only while a rollout is live). Without the pause, a fast machine
  finished the shadowed stages before Prometheus held two scrapes with an increase between
  them: the first value it saw already held every comparison, and the agreement and
  divergence panels were 0/0 (NaN) for good;
- `prom-fail` has a student that always fails (`student_chaos_error_rate=1.0`) and no gate
  that could roll it back: after start and promote every student call fails over and every
  shadow call fails; once Prometheus has seen the failovers increase, an operator rollback
  sends it to weight 0. (Ray exports every few seconds and a counter's series appears only when first
  incremented, so a burst that ends before Ray's next export would show no rate at all.)

Requests to `prom-good` name segments (two declared, one not: "other"). Labels flow to it
through POST /v1/feedback a second after each teacher answer (the truth: every disagreement is
the teacher's mistake, so the accuracy gate passes), which gives the accuracy panels and the
online-accuracy rule their data; a forged request id gives the refused-feedback counter its
series. A 4xx on each gives the rejected counter its series. Then every PromQL expression is
run as an instant query: the dashboard's panel targets, annotation queries and `application`
variable (Grafana variables substituted: `$application` = the two apps, `$__rate_interval` = 5m
so the windows span the whole test) and every recording rule's `expr` and recorded series; each
must succeed and return at least one finite value (all-NaN is an empty panel). Prometheus must
also report every rule healthy.

Alerts are conditions, usually empty while things are healthy. For them the test asks that
the expression succeeds, that the expression without its final comparison (`... > 0.02`)
returns data, and that every series selector in it returns data: the series each alert tests
exist under the names it uses. It also checks that the rollback and error-rate alerts are
active for `prom-fail` and that the controller, store, scrape and agreement alerts are quiet.
(tests/unit/test_deploy_files.py fires each alert on synthetic series with promtool.)
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_install import PrometheusTools, ensure_prometheus
from prometheus_run import Prometheus, running_prometheus
from rollout_admin import FEEDBACK_TOKEN, admin_client
from traffic import Labeller, Traffic

from compression.data import _read_rotten_tomatoes
from rollout.feedback import FeedbackItem
from rollout.status import SETTLED_PHASES, Phase
from rollout.views import StatusView
from serving.admin_client import AdminCallError, AdminClient, FeedbackClient

Deploy = Any  # tests/integration/conftest.py
ServeCluster = Any
DEPLOY = Path(__file__).parents[2] / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kdcanary.json"
APPS = ("prom-good", "prom-fail")
RATE_INTERVAL = "5m"  # $__rate_interval: longer than the test, so every event is in every window
GRAFANA_VARIABLES = {
    "$__rate_interval": RATE_INTERVAL,
    "$__interval": "15s",
    "${application}": "|".join(APPS),
    "$application": "|".join(APPS),
}
SELECTOR = re.compile(r"\b(ray_\w+|[a-z_]+:kdcanary_\w+:\w+|up)\b(\{[^}]*\})?")
FAILOVERS_SEEN = {"failovers": 'increase(ray_kdcanary_failovers_total{application="prom-fail"}[5m]) > 0'}
SHADOW_COUNTERS = ("shadow_comparisons_total", "shadow_agreements_total", "shadow_divergence_count")
SHADOW_SEEN = {name: f'increase(ray_kdcanary_{name}{{application="prom-good"}}[5m]) > 0' for name in SHADOW_COUNTERS}
LABELS_SEEN = {"labels": 'increase(ray_kdcanary_feedback_labels_total{application="prom-good"}[5m]) > 0'}
LABELS = ("negative", "positive")
QUIET_WHEN_HEALTHY = {  # nothing in the test stops the controller, the store or the scrape
    "KdcanaryControllerDown",
    "KdcanaryControllerNotTicking",
    "KdcanaryStateStoreUnhealthy",
    "KdcanaryControllerFenced",
    "KdcanaryRayMetricsDown",
    "KdcanaryAgreementBelowThreshold",
    "KdcanaryStudentLessAccurate",
    "KdcanaryWatchChangeDetected",
}
FINAL_COMPARISON = re.compile(r"^(?P<body>.*?)\s*(==|!=|>=|<=|>|<)\s*-?[\d.]+\s*$", re.DOTALL)


# --- Prometheus ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_tools() -> PrometheusTools:
    return ensure_prometheus()


def config_for(metrics_url: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml pointed at this session's Ray, scraping every 5 s.

    A scrape that fails makes every series stale at once (fresh-clone runs ended with
    KdcanaryRayMetricsDown active and every rollout gauge gone, at 1 s and again at 3 s: late in
    a worker's session Ray's metrics agent renders the series of some 20 applications on 2 busy
    cores), and the timeout cannot exceed the interval."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"] |= {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "1s"}
    assert [PROMETHEUS_YML.parent / name for name in config["rule_files"]] == [RULES_YML]
    config["rule_files"] = [str(RULES_YML)]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    job.pop("file_sd_configs")  # Ray's SD file under /tmp/ray is shared by every cluster here
    job["static_configs"] = [{"targets": [httpx.URL(metrics_url).netloc.decode()]}]
    return config


@pytest.fixture(scope="module")
def prometheus(
    prometheus_tools: PrometheusTools, serve_cluster: ServeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    config = config_for(serve_cluster.metrics_url)
    with running_prometheus(prometheus_tools, config, tmp_path_factory.mktemp("prometheus")) as prometheus:
        yield prometheus


# --- traffic and the admin API ----------------------------------------------------------------


def wait_for_phase(admin: AdminClient, phases: set[Phase], within_s: float) -> StatusView:
    deadline = time.monotonic() + within_s
    while True:
        view = admin.status()
        if view.phase in phases:
            return view
        assert time.monotonic() < deadline, f"not {phases} after {within_s} s: {view.message}"
        time.sleep(0.25)


def stages(first_shadow: float, min_requests: int) -> list[dict[str, Any]]:
    first = {"weight": 0, "min_requests": min_requests if first_shadow else 0, "min_dwell_s": 0.5}
    later = [{"weight": w, "min_requests": min_requests, "min_dwell_s": 0.5} for w in (0.5, 1.0)]
    return [first | {"shadow_fraction": first_shadow}, *[s | {"shadow_fraction": 1.0} for s in later]]


GOOD_SPEC = {  # agreement thresholds far under the tiny student's (~0.8): it walks to 100 %
    "stages": stages(1.0, 30),
    "agreement": {"threshold": 0.5},
    "segments": {"names": ["web", "mobile"], "threshold": 0.5, "accuracy_margin": None},
    "errors": {"margin": 0.15},
    "latency": None,
    "tick_interval_s": 0.2,
}
FAIL_SPEC = {  # no gate can roll it back: the test does, once Prometheus has seen the failovers
    "stages": stages(0.0, 30),
    "agreement": {"threshold": 0.5},
    "errors": None,
    "latency": None,
    "fast_rollback": None,
    "tick_interval_s": 0.2,
    "smoke": None,  # its student fails every call: a smoke test would (rightly) stop it before stage 0
}


def segment_of(text: str) -> str:
    """Two declared segments and undeclared ones ("other"), so every segment series exists."""
    return ("web", "mobile", "tv")[len(text) % 3]


def teacher_is_wrong(answer: dict[str, Any]) -> str | None:
    """The label opposite the teacher's answer (student answers stay unlabelled)."""
    said = answer["predictions"][0]["label"]
    return LABELS[1 - LABELS.index(said)] if answer["variant"] == "teacher" else None


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    texts = _read_rotten_tomatoes()[0]
    return [text[:300] for text in random.Random(11).sample(texts, 200)]


# --- the expressions --------------------------------------------------------------------------


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


def dashboard_expressions() -> dict[str, str]:
    """{where: PromQL} for every panel target, annotation query and query variable."""
    board = yaml.safe_load(DASHBOARD.read_text())  # JSON is YAML
    found = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = substitute(target["expr"])
    for note in board["annotations"]["list"]:
        if "expr" in note:
            found[f"annotation {note['name']!r}"] = substitute(note["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":  # Grafana's label_values(metric, label), in PromQL
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert match, variable["definition"]
            found[f"variable {variable['name']!r}"] = f"group by ({match[2]}) ({match[1]})"
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES_YML.read_text())["groups"] for rule in group["rules"]]


def rule_expressions() -> dict[str, str]:
    """{where: PromQL} for every recording rule's expr and recorded name."""
    found = {}
    for rule in rules():
        if "record" in rule:
            found[f"record {rule['record']} expr"] = rule["expr"]
            found[f"record {rule['record']} series"] = rule["record"]
    return found


def alert_expressions() -> dict[str, str]:
    """{where: PromQL} that must return data for each alert: the expression without its final
    comparison (when it ends in one) and every series selector in it."""
    found = {}
    for rule in rules():
        if "alert" not in rule:
            continue
        name, expr = rule["alert"], rule["expr"].strip()
        if match := FINAL_COMPARISON.match(expr):
            found[f"alert {name} without its comparison"] = match["body"]
        for selector in {m.group(0) for m in SELECTOR.finditer(expr)}:
            found[f"alert {name} selector {selector}"] = selector
    return found


def empty_or_failed(prometheus: Prometheus, expressions: dict[str, str]) -> dict[str, str]:
    """{where: what went wrong} for each expression that fails or has no finite value (a panel
    whose every series is NaN, e.g. 0/0 from counters that never moved, draws nothing)."""
    bad = {}
    for where, expr in expressions.items():
        answer = prometheus.query(expr)
        if answer["status"] != "success":
            bad[where] = f"{answer.get('errorType')}: {answer.get('error')} in {expr}"
        elif not any(math.isfinite(float(series["value"][1])) for series in answer["data"]["result"]):
            bad[where] = f"no data: {expr} -> {answer['data']['result'][:3]}"
    return bad


def alerts_that_do_not_parse(prometheus: Prometheus) -> dict[str, str]:
    bad = {}
    for rule in rules():
        if "alert" in rule and (answer := prometheus.query(rule["expr"]))["status"] != "success":
            bad[f"alert {rule['alert']}"] = f"{answer.get('errorType')}: {answer.get('error')}"
    return bad


def alerts(prometheus: Prometheus) -> list[dict[str, Any]]:
    """Alerts pending or firing now."""
    active: list[dict[str, Any]] = prometheus.get("/api/v1/alerts")["alerts"]
    return active


def unhealthy_rules(prometheus: Prometheus) -> dict[str, str]:
    loaded = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert len(loaded) == len(rules()), "Prometheus did not load every rule in rules.yml"
    return {rule["name"]: rule.get("lastError", "") for rule in loaded if rule["health"] != "ok"}


def wait_for_data(prometheus: Prometheus, expressions: dict[str, str], within_s: float) -> dict[str, str]:
    """Poll until every expression returns data (Ray exports replica metrics every few seconds)."""
    deadline = time.monotonic() + within_s
    while (bad := empty_or_failed(prometheus, expressions)) and time.monotonic() < deadline:
        time.sleep(2.0)
    return bad


# --- the test ---------------------------------------------------------------------------------


def test_every_dashboard_and_rule_expression_returns_data(
    deploy: Deploy, prometheus: Prometheus, reviews: list[str]
) -> None:
    expressions = dashboard_expressions() | rule_expressions() | alert_expressions()
    failing = {"rollout": FAIL_SPEC, "student_chaos_error_rate": 1.0}
    with (
        deploy("prom-good", rollout=GOOD_SPEC) as good,
        deploy("prom-fail", **failing) as bad,
        admin_client(good) as good_admin,
        admin_client(bad) as bad_admin,
        FeedbackClient(str(good.base_url), FEEDBACK_TOKEN) as feedback,
    ):
        for client, admin in ((good, good_admin), (bad, bad_admin)):
            assert client.post("/v1/predict", json={"inputs": []}).status_code == 422  # a rejected request
            admin.start("prometheus test")
        good_admin.pause("no traffic yet: it cannot leave the shadow stage before it resumes")
        wait_for_phase(good_admin, {Phase.PAUSED}, within_s=30)
        with pytest.raises(AdminCallError):  # an id this deployment never signed: refused, counted
            feedback.send([FeedbackItem(request_id="forged.id", label=0)])
        with (
            Traffic(good, reviews, workers=2, segment_of=segment_of) as good_traffic,
            Traffic(bad, reviews, workers=2),
            Labeller(good_traffic, feedback, teacher_is_wrong),
        ):
            assert bad_admin.promote(reason="prometheus test").weight == 0.5  # every student call now fails over
            # rate() sees a counter move only between two scrapes: each rollout moves on only once
            # Prometheus holds an increase of what its panels divide by, so no window is 0/0.
            assert not wait_for_data(prometheus, FAILOVERS_SEEN | SHADOW_SEEN | LABELS_SEEN, within_s=120)
            assert bad_admin.rollback("prometheus test").weight == 0.0
            good_admin.resume("prometheus test")
            view = wait_for_phase(good_admin, set(SETTLED_PHASES), within_s=120)
            assert view.phase is Phase.WATCHING, view.last_reasons
            missing = wait_for_data(prometheus, expressions, within_s=90)
            unparsed = alerts_that_do_not_parse(prometheus)
            unhealthy = unhealthy_rules(prometheus)
            active = {(a["labels"]["alertname"], a["labels"].get("application")) for a in alerts(prometheus)}
    kinds = ("panel", "annotation", "variable", "record", "alert")
    counts = {kind: sum(where.startswith(kind) for where in expressions) for kind in kinds}
    print(f"evaluated {len(expressions)} expressions {counts}; active alerts {sorted(active)}")
    assert not unparsed, unparsed
    assert not unhealthy, unhealthy
    assert not missing, "\n".join(f"{where}: {why}" for where, why in missing.items())
    assert {("KdcanaryRolledBack", "prom-fail"), ("KdcanaryStudentErrorRate", "prom-fail")} <= active
    assert not {name for name, app in active if app in (*APPS, None)} & QUIET_WHEN_HEALTHY  # other tests' apps aside
