"""Fault drills: real faults injected into a running kdcanary application under steady load.

Each drill drives a rollout through the admin API, as an operator would, while a load
generator sends traffic through the router and counts every answer a client would see as
failed (a non-200 or no answer). Faults are real: a replica's actor is killed with
`ray.kill`, the controller's process is denied file growth (its store becomes "full"), a
router replica dies with requests in flight, a second controller opens the live store (as a
RayService upgrade's new cluster does). Serve restarts what was killed.

The tests (tests/integration/test_faults.py) run each drill briefly; `bench/reliability.py`
runs them longer at a higher rate. Every drill returns a `DrillResult` with its figures.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from rollout.events import Event, EventKind
from rollout.spec import percent
from rollout.status import SETTLED_PHASES, Phase
from rollout.views import StatusView
from serving.admin_client import AdminCallError, AdminClient
from serving.demo.load import LoadGenerator
from serving.local_cluster import LocalCluster, with_deployment, with_user_config


def drill_spec(min_requests: int = 30) -> dict[str, Any]:
    """A quick rollout spec for drills: 0/25/50/100 %, lax gates (the faults are the point),
    a trip wire of 3 consecutive student errors, no smoke test (drills start and promote at
    once; the smoke test has tests of its own). A huge `min_requests` holds each stage."""
    stage = {"min_requests": min_requests, "min_dwell_s": 0.5, "shadow_fraction": 0.5}
    return {
        "stages": [{"weight": w, **stage} for w in (0.0, 0.25, 0.5, 1.0)],
        "agreement": {"threshold": 0.5},
        "errors": {"margin": 0.2},
        "latency": None,
        "fast_rollback": {"max_consecutive_errors": 3, "window_s": 5.0, "min_window_requests": 5},
        "tick_interval_s": 0.2,
        "smoke": None,
    }


HOLD = 100_000  # min_requests that keeps a drill at the stage it was put on


class DrillResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    requests: int  # answers received during the drill
    failed: int  # of those, failed as a client sees it
    shed: int = 0  # not sent: the load generator's in-flight bound was reached
    rollback_latency_s: float | None = None  # first fault -> weight 0 in the controller
    resume_s: float | None = None  # fault -> the controller answers again at the same stage
    events_lost: int | None = None  # events saved before a takeover and missing after it
    replicas_restarted: int | None = None  # by an update that should have been applied in place
    unvetted_answers: int | None = None  # client answers from a student its rollout had not let in
    notes: str = ""


class Drill:
    """One application under load: admin calls, waits and replica kills, with the clock."""

    def __init__(self, base_url: str, app: str, token: str, texts: list[str], rate: float) -> None:
        self.app = app
        self.admin = AdminClient(base_url, token, actor="drill", timeout_s=30.0)
        self.load = LoadGenerator(f"{base_url}/v1/predict", [(text, None) for text in texts], rate)
        self.started = time.monotonic()

    def __enter__(self) -> Drill:
        self.load.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.load.stop()
        self.admin.close()

    def status(self) -> StatusView | None:
        """GET status, or None while the controller cannot answer."""
        try:
            return self.admin.status()
        except AdminCallError:
            return None

    def wait(self, done: Callable[[StatusView], bool], within_s: float) -> StatusView:
        deadline = time.monotonic() + within_s
        while True:
            view = self.status()
            if view is not None and done(view):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.app}: not there after {within_s} s: {view and view.message}")
            time.sleep(0.1)

    def replicas(self, deployment: str) -> list[Any]:
        """The actors of `deployment`'s replicas."""
        return replica_actors(self.app, deployment)

    def kill(self, deployment: str, count: int = 1) -> None:
        """Kill `count` replicas of `deployment`; Serve starts new ones."""
        import ray

        for actor in self.replicas(deployment)[:count]:
            ray.kill(actor, no_restart=True)

    def pid(self, deployment: str) -> int:
        return replica_pids(self.app, deployment)[0]

    def result(self, name: str, **figures: Any) -> DrillResult:
        requests, failed = self.load.failures_since(self.started)
        return DrillResult(name=name, requests=requests, failed=failed, shed=self.load.shed, **figures)


def replica_actors(app: str, deployment: str) -> list[Any]:
    """The Ray actors of an application's deployment's replicas (on the driver's Ray session)."""
    import ray

    prefix = f"{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if prefix in a["name"]]
    return [ray.get_actor(name, namespace="serve") for name in names]


def replica_pids(app: str, deployment: str) -> list[int]:
    import os

    import ray

    return [int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))) for actor in replica_actors(app, deployment)]


def transitions_under_load(drill: Drill, within_s: float = 240.0) -> DrillResult:
    """A whole rollout to 100 %, with a manual weight and a resume on the way: 0 failures."""
    drill.admin.start("drill: transitions under load")
    drill.wait(lambda v: v.stage_index >= 1, within_s)
    drill.admin.set_weight(0.3, "drill: manual weight under load")
    time.sleep(2.0)
    drill.admin.resume("drill: back to evidence")
    final = drill.wait(lambda v: v.phase in SETTLED_PHASES, within_s)
    return drill.result("transitions_under_load", notes=f"ended {final.phase.value}")


def student_killed(drill: Drill, within_s: float = 60.0) -> DrillResult:
    """The student's replica dies mid-canary: failover answers; the trip wire rolls back.

    `rollback_latency_s` runs from the first student failure the controller heard of (the
    kill shows as errors or timeouts at the router first) to the rollback decision.
    """
    drill.admin.start("drill: student killed")
    drill.admin.promote(reason="drill: to the first live stage")
    errors_before = drill.wait(lambda v: v.evidence.student_requests >= 20, within_s).evidence.student_errors
    killed_at = time.time()
    drill.kill("student")
    first_error = drill.wait(
        lambda v: v.evidence.student_errors > errors_before or v.phase is Phase.ROLLED_BACK, within_s
    )
    drill.wait(lambda v: v.phase is Phase.ROLLED_BACK, within_s)
    events = drill.admin.events(limit=1000)
    rollback = next(e for e in events if e.kind is EventKind.DECISION and e.action == "rollback")
    time.sleep(1.0)
    heard_at = min(first_error.now, rollback.at)
    notes = (
        f"kill -> first failure heard {heard_at - killed_at:.2f} s; kill -> weight 0 {rollback.at - killed_at:.2f} s"
    )
    return drill.result("student_killed", rollback_latency_s=round(rollback.at - heard_at, 3), notes=notes)


def teacher_killed(drill: Drill, within_s: float = 60.0) -> DrillResult:
    """The teacher's replica dies with the student at 100 %: nothing fails, Serve recovers."""
    drill.admin.start("drill: teacher killed")
    drill.admin.promote(to_full=True, reason="drill: student at 100 %")
    time.sleep(2.0)
    drill.kill("teacher")
    _wait_healthy(drill.app, within_s)
    time.sleep(1.0)
    return drill.result("teacher_killed")


def controller_killed(drill: Drill, within_s: float = 60.0) -> DrillResult:
    """The controller dies: routers keep the weight (the student keeps answering); it resumes
    with its stage, its evidence and its event log from the store, and logs that it resumed."""
    drill.admin.start("drill: controller killed")
    before = drill.admin.promote(reason="drill: a live stage")
    drill.wait(lambda v: v.evidence.student_requests >= 20, within_s)
    ids_before = [e.id for e in drill.admin.events(limit=1000)]
    killed_at = time.monotonic()
    drill.kill("controller")
    time.sleep(0.2)
    after = drill.wait(lambda v: v.epoch == before.epoch, within_s)
    resumed_at = time.monotonic()
    log = drill.admin.events(limit=1000)
    ids = [e.id for e in log]
    intact = ids[: len(ids_before)] == ids_before and ids == list(range(1, len(ids) + 1))
    same = (after.stage_index, after.weight) == (before.stage_index, before.weight)
    student = before.routing.student_id or ""
    # the student's answers that completed between the kill and the resumed controller's first status
    meanwhile = drill.load.answers_from(student, killed_at) - drill.load.answers_from(student, resumed_at)
    resumed = [e.payload.get("stage_index") for e in log[len(ids_before) :] if e.action == "resumed"]
    notes = (
        f"same stage and weight: {same}; evidence restored: {after.evidence.student_requests > 0}; "
        f"the student answered meanwhile: {meanwhile > 0}; "
        f"resumed logged at its stage: {before.stage_index in resumed}; "
        f"event ids contiguous, none lost or duplicated: {intact}"
    )
    return drill.result("controller_killed", resume_s=round(resumed_at - killed_at, 3), notes=notes)


def router_killed(drill: Drill, within_s: float = 60.0) -> DrillResult:
    """One of two router replicas dies: only requests in flight on it may fail."""
    drill.admin.start("drill: router killed")
    drill.admin.promote(reason="drill: a live stage")
    time.sleep(2.0)
    drill.kill("router")
    _wait_healthy(drill.app, within_s)
    time.sleep(1.0)
    return drill.result("router_killed")


def store_full(drill: Drill, within_s: float = 60.0) -> DrillResult:
    """The controller's process may no longer grow any file (RLIMIT_FSIZE = 0, i.e. a full
    disk for SQLite): it must hold, say so in its status, then recover when space returns."""
    drill.admin.start("drill: store full")
    drill.wait(lambda v: v.store.last_saved_at is not None, within_s)
    pid = drill.pid("controller")
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, limits[1]))
    try:
        failing = drill.wait(lambda v: not v.store.healthy, within_s)
        held = failing.stage_index
        time.sleep(3.0)
        still = drill.status()
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
    recovered = drill.wait(lambda v: v.store.healthy, within_s)
    notes = (
        f"held at stage {held} while failing: {still is not None and still.stage_index == held}; "
        f"recovered after {recovered.store.failures_total} failed saves"
    )
    return drill.result("store_full", notes=notes)


def second_controller(drill: Drill, within_s: float = 60.0) -> DrillResult:
    """A second controller opens the live rollout's store, as a RayService upgrade's new cluster
    does: it takes over, the serving controller is fenced (it writes nothing more and refuses
    intents with 409), no saved event is lost, and the routers keep answering."""
    from rollout.clock import SystemClock
    from rollout.controller import RolloutController
    from rollout.spec import RolloutSpec
    from rollout.store import SqliteStateStore
    from rollout.webhooks import RecordingWebhookSender

    drill.admin.start("drill: second controller")
    before = drill.admin.promote(reason="drill: a live stage")
    drill.wait(lambda v: v.evidence.student_requests >= 20, within_s)
    saved, location = _saved_events(drill, within_s)
    started = time.monotonic()
    spec = RolloutSpec.from_mapping(drill_spec(HOLD))  # the new cluster's spec: same stages
    new = RolloutController(spec, SqliteStateStore(location), SystemClock(), RecordingWebhookSender(), holder="drill")
    fenced = drill.wait(lambda v: v.store.fenced, within_s)
    fenced_s = time.monotonic() - started
    try:
        drill.admin.pause("drill: an intent on the fenced controller")
        refused = "accepted (wrong)"
    except AdminCallError as exc:
        refused = f"refused with {exc.status}"
    log = new.events(limit=1000)  # the store's log: the new writer has nothing pending
    after = {e.id: e for e in log}
    lost = sum(after.get(e.id) != e for e in saved)
    resumed = log[-1]
    notes = (
        f"fenced {fenced_s:.2f} s after the takeover, at stage {fenced.stage_index} (was {before.stage_index}); "
        f"pause {refused}; new controller resumed at stage {new.snapshot().stage_index}, "
        f"term {resumed.payload['claim']['term']}"
    )
    return drill.result("two_controllers_one_store", events_lost=lost, notes=notes)


def _saved_events(drill: Drill, within_s: float) -> tuple[list[Event], str]:
    """The event log once none of it is pending (every listed event is in the store), and the
    store's path."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        events = drill.admin.events(limit=1000)
        view = drill.admin.status()
        if view.store.pending_events == 0 and view.last_event_id == events[-1].id:
            return events, view.store.location
        time.sleep(0.1)
    raise TimeoutError(f"{drill.app}: events still pending after {within_s} s")


def _wait_healthy(app: str, within_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + within_s
    time.sleep(0.5)  # let Serve notice the death first
    while serve.status().applications[app].status != "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app} did not recover in {within_s} s")
        time.sleep(0.2)


# --- on a LocalCluster (serving/local_cluster.py): Ray's own CLI, two nodes ----------------------


def student_swapped_by_serve_deploy(
    drill: Drill, cluster: LocalCluster, student_id: str, within_s: float = 120.0
) -> DrillResult:
    """`serve deploy` with another student bundle while the old one is live: every replica is
    reconfigured in place (none restarts), a fresh rollout for the new pair begins at its shadow
    stage, and no client gets an answer from the new student (its rollout holds at weight 0)."""
    live = _student_live(drill, within_s)
    before = cluster.replica_ids()
    deployed_at = time.monotonic()
    cluster.serve_deploy(with_user_config(cluster.config, "student", {"bundle": student_id}), "student-swapped")
    drill.wait(lambda v: v.routing.student_id == student_id, within_s)
    switch_s = time.monotonic() - deployed_at
    cluster.wait_running(within_s)
    fresh = drill.wait(lambda v: v.evidence.student_requests >= 20, within_s)  # the new student at work, in shadow
    notes = (
        f"{live.routing.student_id} at {percent(live.routing.weight)} -> {student_id}: its rollout "
        f"{fresh.phase.value} at stage {fresh.stage_index} ({percent(fresh.routing.weight)}) {switch_s:.1f} s after "
        "the deploy"
    )
    return drill.result(
        "student_swapped_by_serve_deploy",
        replicas_restarted=_restarted(before, cluster.replica_ids()),
        unvetted_answers=drill.load.answers_from(student_id, since=drill.started),
        notes=notes,
    )


def spec_changed_by_serve_deploy(drill: Drill, cluster: LocalCluster, within_s: float = 120.0) -> DrillResult:
    """`serve deploy` with a changed rollout spec: the live controller adopts it in place (a
    spec_changed event, same stage and weight) and no replica restarts."""
    before_view, before = _student_live(drill, within_s), cluster.replica_ids()
    last_id = drill.admin.events(limit=1000)[-1].id
    spec = drill_spec(HOLD) | {"agreement": {"threshold": 0.4}}
    cluster.serve_deploy(with_user_config(cluster.config, "controller", spec), "spec-changed")
    deadline = time.monotonic() + within_s
    while not any(e.action == "spec_changed" for e in drill.admin.events(after=last_id, limit=1000)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no spec_changed event {within_s} s after the deploy")
        time.sleep(0.2)
    after = drill.admin.status()
    cluster.wait_running(within_s)
    same = (after.stage_index, after.routing.weight) == (before_view.stage_index, before_view.routing.weight)
    return drill.result(
        "spec_changed_by_serve_deploy",
        replicas_restarted=_restarted(before, cluster.replica_ids()),
        notes=f"spec_changed event; same stage and weight: {same}",
    )


def student_scaled_down_by_serve_deploy(drill: Drill, cluster: LocalCluster, within_s: float = 120.0) -> DrillResult:
    """`serve deploy` scales the live student from 2 replicas to 1: the one Serve stops drains its
    stream lane (calls in flight finish, new ones are refused untaken and go through Serve), so
    no request fails, and the other replicas keep running."""
    _student_live(drill, within_s)
    cluster.serve_deploy(with_deployment(cluster.config, "student", num_replicas=2), "student-scaled-up")
    cluster.wait_running(within_s)
    drill.wait(lambda v: v.evidence.student_requests >= 40, within_s)  # both replicas' lanes in use
    before = cluster.replica_ids()
    cluster.serve_deploy(with_deployment(cluster.config, "student", num_replicas=1), "student-scaled-down")
    cluster.wait_running(within_s)
    after = cluster.replica_ids()
    time.sleep(1.0)  # requests after the replica left count too
    restarted = _restarted(before, after) - 1  # one student replica was meant to go
    return drill.result("student_scaled_down_by_serve_deploy", replicas_restarted=restarted, notes="2 -> 1 replicas")


def student_node_killed(drill: Drill, cluster: LocalCluster, within_s: float = 60.0) -> DrillResult:
    """The node holding the student dies whole (SIGKILL) with the student live: the teacher answers
    every request, and the trip wire rolls back. `rollback_latency_s` runs from the kill to the
    rollback decision (weight 0)."""
    _student_live(drill, within_s)
    killed_at = time.time()
    cluster.kill_node("worker")
    drill.wait(lambda v: v.phase is Phase.ROLLED_BACK, within_s)
    rollback = next(e for e in reversed(drill.admin.events(limit=1000)) if e.action == "rollback")
    time.sleep(1.0)  # requests after the rollback count too
    latency = round(rollback.at - killed_at, 3)
    return drill.result("student_node_killed", rollback_latency_s=latency, notes=f"rolled back: {rollback.reason}")


def _student_live(drill: Drill, within_s: float) -> StatusView:
    """The rollout started and past its shadow stage, with some student answers behind it."""
    view = drill.wait(lambda _: True, within_s)
    if view.phase is Phase.PENDING:
        drill.admin.start("drill: a rollout under way")
    if view.routing.weight == 0:
        drill.admin.promote(reason="drill: the student live")
    return drill.wait(lambda v: v.routing.weight > 0 and v.evidence.student_requests >= 20, within_s)


def _restarted(before: dict[str, set[str]], after: dict[str, set[str]]) -> int:
    """Replicas of `before` that are gone from `after` (a restart gives a replica a new id)."""
    return sum(len(ids - after.get(name, set())) for name, ids in before.items())
