"""After the stages, on real Ray Serve: a stage that asks for a person's yes waits for
`kdcanary rollout confirm`, a stage past its deadline pauses with the numbers, and a promoted
student is watched and rolled back when its detector alarms. Before all that, forced variants:
X-Kdcanary-Variant with the force token, and a dogfood key, choose the model at weight 0.

The tiny recipe's student agrees with the teacher on about 80 % of review sentences; a watch
floor of 0.99 makes that a change the detector must catch (a drifted student, as far as the
watch can tell), with a small ARL so it does within seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from rollout_admin import ADMIN_TOKEN, FORCE_TOKEN, admin_client, review_sample, wait_for_status
from traffic import Traffic

from rollout.status import Phase
from serving.cli import main as kdcanary

Deploy = Any  # tests/integration/conftest.py

SPEC = {
    "stages": [
        {"weight": 0, "min_requests": 20, "min_dwell_s": 0.5, "shadow_fraction": 1.0},
        {"weight": 0.5, "min_requests": 20, "min_dwell_s": 0.5, "shadow_fraction": 1.0, "confirm": True},
        {"weight": 1.0, "min_requests": 1_000_000, "min_dwell_s": 0.5, "shadow_fraction": 1.0, "max_duration_s": 3},
    ],
    "agreement": {"threshold": 0.65},
    "errors": {"margin": 0.15},
    "latency": None,
    "watch": {"shadow_fraction": 1.0, "agreement_floor": 0.99, "arl": 1000},
    "tick_interval_s": 0.2,
    "dogfood_keys": ["dogfooder"],
}


def dogfooded(client: httpx.Client) -> str:
    """The variant that answers the dogfood user."""
    answer = client.post("/v1/predict", json={"inputs": ["eat it"], "routing_key": "dogfooder"})
    return str(answer.json()["variant"])


def forced_answers(client: httpx.Client) -> None:
    """Before any rollout (weight 0: the coin sends everyone to the teacher)."""
    force = {"x-kdcanary-variant": "student", "authorization": f"Bearer {FORCE_TOKEN}"}
    answer = client.post("/v1/predict", json={"inputs": ["QA on purpose"]}, headers=force)
    assert answer.status_code == 200 and answer.json()["variant"] == "student", answer.text
    assert answer.json()["request_id"].startswith("unsigned.")  # never judged: no label can come back for it
    refused = client.post("/v1/predict", json={"inputs": ["x"]}, headers={"x-kdcanary-variant": "student"})
    assert refused.status_code == 401 and "force token" in refused.json()["detail"]
    wrong = client.post("/v1/predict", json={"inputs": ["x"]}, headers={**force, "x-kdcanary-variant": "both"})
    assert wrong.status_code == 422 and wrong.json()["field"] == "X-Kdcanary-Variant"
    deadline = time.monotonic() + 30  # the router takes the spec's keys with its first routing answer
    while dogfooded(client) != "student":
        assert time.monotonic() < deadline, "the dogfood key was never honoured"
        time.sleep(0.2)
    anyone = client.post("/v1/predict", json={"inputs": ["just a user"], "routing_key": "someone"})
    assert anyone.json()["variant"] == "teacher"


def test_forced_variants_confirmation_deadline_and_watch_on_real_serve(deploy: Deploy) -> None:
    with deploy("watched", rollout=SPEC) as client, admin_client(client) as admin:
        forced_answers(client)
        with Traffic(client, review_sample(9, 300)):
            admin.start("integration test")
            waiting = wait_for_status(admin, lambda v: v.awaiting_confirmation == 1, 120, "waiting for a confirm")
            assert waiting.stage_index == 0 and "waiting for confirmation to enter stage 1" in waiting.message
            url = str(client.base_url).rstrip("/")
            who = ["--url", url, "--token", ADMIN_TOKEN, "--actor", "qa-lead"]
            assert kdcanary(["rollout", "confirm", *who, "--reason", "QA signed off"]) == 0
            paused = wait_for_status(admin, lambda v: v.deadline_passed_at is not None, 120, "paused by its deadline")
            assert (paused.phase, paused.stage_index, paused.weight) == (Phase.PAUSED, 2, 1.0)
            promoted = admin.promote(to_full=True, reason="the stage proved enough")
            assert promoted.phase in (Phase.WATCHING, Phase.ROLLED_BACK)
            view = wait_for_status(admin, lambda v: v.phase is Phase.ROLLED_BACK, 120, "rolled back by the watch")
        log = admin.events(limit=1000)
    assert view.rollback_reason is not None and "watch: change detected in agreement" in view.rollback_reason
    smoke = next(e for e in log if e.action == "smoke_test")  # the default smoke test ran before stage 0
    assert smoke.payload["passed"] and smoke.payload["inputs"] > 0 and not smoke.payload["skipped"]
    confirmed = next(e for e in log if e.action == "confirm")
    assert (confirmed.actor, confirmed.reason, confirmed.payload["stage"]) == ("qa-lead", "QA signed off", 1)
    deadline = next(e for e in log if e.action == "pause" and e.kind.value == "decision")
    gates = {g["name"]: g for g in deadline.payload["decision"]["gates"]}
    assert gates["deadline"]["verdict"] == "fail" and gates["deadline"]["threshold"] == 3
    assert next(e for e in log if e.action == "complete").payload["to"]["phase"] == "watching"
    rollback = next(e for e in log if e.action == "rollback")
    watch = {g["name"]: g for g in rollback.payload["decision"]["gates"]}["watch"]
    assert watch["verdict"] == "fail" and watch["estimate"] >= 1.0


def golden_set(path: Path, count: int) -> Path:
    """A team's labelled golden set: `count` review sentences with their label names, as JSONL."""
    from compression.data import _read_rotten_tomatoes

    texts, labels, names, _ = _read_rotten_tomatoes()
    rows = [{"text": texts[i][:500], "label": names[labels[i]]} for i in range(0, len(texts), len(texts) // count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:count]))
    return path


def test_a_served_student_unlike_its_registered_self_never_reaches_stage_0(deploy: Deploy, tmp_path: Path) -> None:
    """Served with inputs cut to 4 tokens (an operator bounding long inputs' cost), the student
    answers the spec's golden set unlike the bundle the registry measured: the smoke test rolls
    the rollout back before stage 0, and its event says by how much."""
    spec = {"smoke": {"inputs": str(golden_set(tmp_path / "golden.jsonl", 200))}, "tick_interval_s": 0.2}
    with deploy("unlike", rollout=spec, student_max_length=4) as client, admin_client(client) as admin:
        admin.start("integration test")
        view = wait_for_status(admin, lambda v: v.phase is Phase.ROLLED_BACK, 120, "rolled back by the smoke test")
        log = admin.events(limit=1000)
    assert view.rollback_reason is not None and "smoke test failed: the served student" in view.rollback_reason
    smoke = next(e for e in log if e.action == "smoke_test")
    assert not smoke.payload["passed"] and smoke.payload["inputs"] == 200
    assert smoke.payload["figures"]["matched_teacher"] == 1.0 and smoke.payload["figures"]["matched_student"] < 0.98
    assert not [e for e in log if e.action == "start" and e.kind.value == "decision"]  # stage 0 never began
    rollback = next(e for e in log if e.action == "rollback")
    assert [g["name"] for g in rollback.payload["decision"]["gates"]] == ["smoke"]


def plot_sentences(count: int) -> list[str]:
    """Sentences of the corpus's plot synopses: text no recipe labelled (what the loop bench serves)."""
    from compression.data import SENTENCE_END, _read_rotten_tomatoes

    plots = _read_rotten_tomatoes()[3]
    sentences = [s for plot in plots for s in SENTENCE_END.split(plot) if 20 <= len(s) <= 400]
    return sentences[:count]


def test_disagreements_are_logged_exported_and_read_by_a_recipe(deploy: Deploy, tmp_path: Path) -> None:
    from compression.data import load_corpus
    from compression.recipe import DataConfig

    held = {"weight": 0, "min_requests": 1_000_000, "min_dwell_s": 0.5, "shadow_fraction": 1.0}
    spec = {
        "stages": [held, {"weight": 1.0}],
        **dict.fromkeys(("agreement", "errors", "latency", "smoke", "watch")),  # nothing moves it
        "disagreements": {"per_batch": 50},
        "tick_interval_s": 0.2,
    }
    with deploy("logged", rollout=spec) as client, admin_client(client) as admin:
        with Traffic(client, plot_sentences(300)):
            admin.start("integration test")  # stage 0 mirrors every request
            wait_for_status(admin, lambda v: v.evidence.agreement_compared >= 60, 120, "comparing answers")
        logged = admin.disagreements()
        out = tmp_path / "disagreements.jsonl"
        who = ["--url", str(client.base_url).rstrip("/"), "--token", ADMIN_TOKEN]
        assert kdcanary(["rollout", "disagreements", *who, "--out", str(out)]) == 0
    assert logged and all(e.teacher_label != e.student_label and e.stage == 0 for e in logged)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))  # nothing lost, nothing twice
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # Routers may still flush a last batch after the traffic stopped: the later export extends the log read before.
    assert [line["text"] for line in lines][: len(logged)] == [e.text for e in logged]
    assert set(lines[0]) >= {"text", "teacher_probabilities", "student_probabilities", "segment", "stage", "at"}
    data = DataConfig.model_validate({"transfer": {"paths": [str(out)]}})
    transfer = set(load_corpus(data, seed=13).transfer.texts)
    assert {e.text.strip() for e in logged} <= transfer  # a recipe distils on them, teacher-labelled
