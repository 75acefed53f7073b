"""Labels on real Ray Serve: POST /v1/feedback and the accuracy gate, end to end.

Request ids are receipts the routers sign with the controller's key; labels come back a second
after each answer through the typed FeedbackClient, on whichever router replica the proxy picks
(two per application), and the controller joins them with the answers it kept for shadowed
requests. The truth is what each test says it is, relative to the teacher's served answer, so
the gate's verdict is known in advance: labels equal to the teacher's answers make every
disagreement the student's mistake; labels opposite to them make every disagreement the
teacher's. Only teacher-served answers are labelled (a student-served one does not show what
the teacher would have said).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rollout_admin import ADMIN_TOKEN, FEEDBACK_TOKEN, admin_client, review_sample, wait_for_status
from traffic import Labeller, Traffic

from rollout.feedback import FeedbackItem
from rollout.status import SETTLED_PHASES, TERMINAL_PHASES, Phase
from serving.admin_client import AdminCallError, AdminClient, FeedbackClient
from serving.router import VERSION_HEADER

Deploy = Any  # tests/integration/conftest.py
Truth = Callable[[dict[str, Any]], str | None]  # the label an answer gets, None: left unlabelled
LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return review_sample(5, 300)


def spec(agreement: float, accuracy: dict[str, Any], min_requests: int = 40) -> dict[str, Any]:
    stage = {"min_requests": min_requests, "min_dwell_s": 0.5, "shadow_fraction": 1.0}
    return {
        "stages": [stage | {"weight": w} for w in (0.0, 0.5, 1.0)],
        "agreement": {"threshold": agreement},
        "accuracy": accuracy,
        "errors": {"margin": 0.15},
        "latency": None,
        "tick_interval_s": 0.2,
    }


def feedback_client(client: httpx.Client, token: str = FEEDBACK_TOKEN) -> FeedbackClient:
    return FeedbackClient(str(client.base_url), token)


def signed_answer(client: httpx.Client, text: str, version: int = 0, within_s: float = 30.0) -> dict[str, Any]:
    """An answer whose request id is signed (once routers hold the key and a routing naming the
    pair) from a router holding routing `version` or newer."""
    deadline = time.monotonic() + within_s
    while True:
        response = client.post("/v1/predict", json={"inputs": [text]})
        answer: dict[str, Any] = response.json()
        if not answer["request_id"].startswith("unsigned.") and int(response.headers[VERSION_HEADER]) >= version:
            return answer
        assert time.monotonic() < deadline, "routers never got the receipt key"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def labelled_app(deploy: Deploy) -> Iterator[httpx.Client]:
    """No gate judges it (so nothing moves under the test); labels older than 3 s are refused."""
    quiet = spec(0.5, {"max_label_age_s": 3.0}) | {"agreement": None, "errors": None}
    with deploy("feedback", rollout=quiet, routers=2) as client:
        yield client


def test_feedback_needs_its_own_token(labelled_app: httpx.Client) -> None:
    item = [{"request_id": "x.y", "label": 1}]
    for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, {"Authorization": "Bearer wrong"}):
        response = labelled_app.post("/v1/feedback", json=item, headers=headers)
        assert response.status_code == 401 and FEEDBACK_TOKEN not in response.text
        assert response.headers["www-authenticate"] == "Bearer"


def test_labels_are_taken_once_on_any_replica_and_bad_ones_refused_naming_the_item(
    labelled_app: httpx.Client, reviews: list[str]
) -> None:
    answers = [signed_answer(labelled_app, text) for text in reviews[:6]]
    forged = answers[0]["request_id"][:-4] + "AAAA"
    with feedback_client(labelled_app) as feedback:
        refusals = {
            404: [FeedbackItem(request_id=forged, label=0)],
            422: [FeedbackItem(request_id=answers[0]["request_id"], label="neutral")],
        }
        for status, items in refusals.items():
            with pytest.raises(AdminCallError) as refused:
                feedback.send(items)
            assert refused.value.status == status and "items.0" in str(refused.value)
        for answer in answers[:5]:  # one at a time: the proxy spreads them over both routers
            taken = feedback.send(
                [FeedbackItem(request_id=answer["request_id"], label=answer["predictions"][0]["label"])]
            )
            assert (taken.requests, taken.labels) == (1, 1)
        with pytest.raises(AdminCallError) as repeated:  # all or nothing: the fresh one is not taken
            feedback.send([FeedbackItem(request_id=r["request_id"], label=0) for r in (answers[5], answers[0])])
        assert repeated.value.status == 409 and "already taken" in str(repeated.value)
        time.sleep(3.5)  # max_label_age_s is 3: the sixth answer is now too old for a label
        with pytest.raises(AdminCallError) as expired:
            feedback.send([FeedbackItem(request_id=answers[5]["request_id"], label=0)])
        assert expired.value.status == 410 and "past max_label_age_s 3" in str(expired.value)
    with admin_client(labelled_app) as admin:
        assert admin.status().evidence.labelled == 5


def test_labels_are_taken_after_every_router_and_the_controller_restarted(deploy: Deploy, reviews: list[str]) -> None:
    """Request ids need no router state: after both routers and the controller are killed and
    Serve has replaced them, labels for answers given before are taken (the key is the state
    directory's) and a repeat is still refused (the ledger is the rollout's SQLite file)."""
    import ray

    from serving.drills import replica_actors

    app, quiet = "feedback-restart", spec(0.5, {}) | {"agreement": None, "errors": None}
    with deploy(app, rollout=quiet, routers=2) as client, feedback_client(client) as feedback:
        before = [signed_answer(client, text) for text in reviews[10:12]]
        feedback.send([FeedbackItem(request_id=before[0]["request_id"], label=0)])
        for actor in replica_actors(app, "router") + replica_actors(app, "controller"):
            ray.kill(actor, no_restart=True)
        served_again(client)
        taken = feedback.send([FeedbackItem(request_id=before[1]["request_id"], label=1)])
        with pytest.raises(AdminCallError) as repeated:
            feedback.send([FeedbackItem(request_id=before[0]["request_id"], label=0)])
    assert taken.labels == 1 and repeated.value.status == 409


def served_again(client: httpx.Client, within_s: float = 90.0) -> None:
    """Wait until the application answers predict again (Serve replaces killed replicas)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if client.post("/v1/predict", json={"inputs": ["are you back?"]}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"not answering {within_s} s after the kill"
        time.sleep(0.5)


def teacher_says(answer: dict[str, Any]) -> str | None:
    return answer["predictions"][0]["label"] if answer["variant"] == "teacher" else None


def teacher_is_wrong(answer: dict[str, Any]) -> str | None:
    said = teacher_says(answer)
    return None if said is None else LABELS[1 - LABELS.index(said)]


def test_labels_roll_back_a_less_accurate_student_whose_agreement_passes(deploy: Deploy, reviews: list[str]) -> None:
    """Every disagreement is the student's mistake: it agrees well enough (threshold 0.5), but
    the paired accuracy difference is about -0.12 and the accuracy gate rolls it back."""
    worse = spec(0.5, {"margin": 0.01, "decides_after": 1})
    with (
        deploy("labels-worse", rollout=worse) as client,
        admin_client(client) as admin,
        feedback_client(client) as feedback,
    ):
        first_label(client, admin, feedback, reviews[0], teacher_says)
        with Traffic(client, reviews) as traffic, Labeller(traffic, feedback, teacher_says) as labeller:
            view = wait_for_status(admin, lambda v: v.phase in TERMINAL_PHASES, 180, "rolled back")
        events = admin.events(limit=1000)
    assert view.phase is Phase.ROLLED_BACK and not labeller.failures, labeller.failures
    (rollback,) = [e for e in events if e.action == "rollback"]
    gates = {g["name"]: g for g in rollback.payload["decision"]["gates"]}
    assert gates["accuracy"]["verdict"] == "fail" and gates["agreement"]["verdict"] != "fail"
    assert gates["accuracy"]["upper"] < -0.01 and "only teacher right" in gates["accuracy"]["message"]
    assert view.evidence.only_teacher > 0 and view.evidence.only_student == 0


def first_label(client: httpx.Client, admin: AdminClient, feedback: FeedbackClient, text: str, truth: Truth) -> None:
    """Start the rollout and label its first shadowed answer before any other traffic: with
    `decides_after: 1` accuracy decides from then on, whatever the agreement evidence does next."""
    admin.start("integration test")
    live = wait_for_status(admin, lambda v: v.phase is Phase.PROGRESSING, 30, "progressing")
    first = signed_answer(client, text, version=live.routing.version)  # shadowed: stage 0 mirrors all
    wait_for_status(admin, lambda v: v.evidence.agreement_compared >= 1, 30, "holding the first pair")
    label = truth(first)
    assert label is not None and feedback.send([FeedbackItem(request_id=first["request_id"], label=label)]).paired == 1


def test_labels_promote_a_more_accurate_student_that_agreement_alone_would_roll_back(
    deploy: Deploy, reviews: list[str]
) -> None:
    """Every disagreement is the teacher's mistake, and agreement (threshold 0.99, the student
    agrees ~0.88) would roll it back. One label arrives before the agreement evidence could fail
    (`decides_after: 1`); from then on accuracy decides, and it promotes the student to 100 %."""
    with (
        deploy("labels-better", rollout=spec(0.99, {"margin": 0.01, "decides_after": 1})) as client,
        admin_client(client) as admin,
        feedback_client(client) as feedback,
    ):
        admin.start("integration test")
        live = wait_for_status(admin, lambda v: v.phase is Phase.PROGRESSING, 30, "progressing")
        first = signed_answer(client, reviews[0], version=live.routing.version)  # shadowed: stage 0 mirrors all
        wait_for_status(admin, lambda v: v.evidence.agreement_compared >= 1, 30, "holding the first pair")
        truth = teacher_is_wrong(first)
        assert (
            truth is not None and feedback.send([FeedbackItem(request_id=first["request_id"], label=truth)]).paired == 1
        )
        with Traffic(client, reviews) as traffic, Labeller(traffic, feedback, teacher_is_wrong) as labeller:
            view = wait_for_status(admin, lambda v: v.phase in SETTLED_PHASES, 240, "promoted")
        events = admin.events(limit=1000)
    assert view.phase is Phase.WATCHING and not labeller.failures, view.rollback_reason
    complete = next(e for e in events if e.action == "complete")
    gates = {g["name"]: g for g in complete.payload["decision"]["gates"]}
    assert gates["accuracy"]["verdict"] == "pass" and gates["accuracy"]["binding"]
    assert gates["agreement"]["verdict"] == "fail" and not gates["agreement"]["binding"]
    assert view.evidence.only_student > 0 and view.evidence.only_teacher == 0
