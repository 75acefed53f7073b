"""serving.admin_client: typed answers, bodies as the API declares them, one error type.

The admin API is answered in process (httpx.MockTransport) from a real RolloutController
over fakes, the way admin_api calls it: intents, then the status after them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.errors import IntentError
from rollout.events import EventKind
from rollout.spec import fixed_share_spec
from rollout.status import Phase
from rollout.store import MemoryStateStore
from rollout.webhooks import RecordingWebhookSender
from serving.admin_client import PREFIX, AdminCallError, AdminClient


class Api:
    """A controller behind the admin routes; remembers every request it saw."""

    def __init__(self) -> None:
        self.controller = RolloutController(
            fixed_share_spec(0.5), MemoryStateStore(), FakeClock(1000.0), RecordingWebhookSender()
        )
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.seen.append((request.method, request.url.path, body))
        if request.headers.get("authorization") != "Bearer t0ken":
            return httpx.Response(401, json={"detail": "invalid bearer token", "field": None})
        action = request.url.path.removeprefix(PREFIX).strip("/")
        c, who = self.controller, {"actor": body.get("actor", ""), "reason": body.get("reason", "")}
        try:
            if action == "events":
                return httpx.Response(200, json=[e.model_dump(mode="json") for e in c.events()])
            if action == "start":
                c.start(**who)
            elif action == "weight":
                c.set_weight(body["weight"], **who)
            elif action == "confirm":
                c.confirm(**who)
            elif action:
                raise AssertionError(f"unexpected route {action}")
            elif c.snapshot().started:
                c.tick()  # the deployment's tick loop, run here between reads
        except IntentError as exc:
            return httpx.Response(409, json={"detail": f"controller refused: {exc}", "field": None})
        return httpx.Response(200, json=c.snapshot().model_dump(mode="json"))


def client(api: Api, token: str = "t0ken") -> AdminClient:
    return AdminClient("http://kdcanary", token, actor="ops", transport=httpx.MockTransport(api))


def test_answers_are_typed_and_bodies_carry_actor_and_reason() -> None:
    api = Api()
    with client(api) as admin:
        assert not admin.status().started
        view = admin.start("ship v2")
        assert view.started and view.phase is Phase.PROGRESSING  # a start is acted on at once
        event = admin.events()[0]
        assert (event.kind, event.action, event.actor, event.reason) == (EventKind.OPERATOR, "start", "ops", "ship v2")
    assert api.seen[1] == ("POST", f"{PREFIX}/start", {"reason": "ship v2", "actor": "ops"})


def test_pin_starts_a_rollout_and_waits_for_the_controller_to_publish_it() -> None:
    api = Api()
    with client(api) as admin:
        view = admin.pin(0.25, reason="hold a quarter")
    assert view.phase is Phase.PAUSED and view.routing.weight == 0.25
    assert view.routing.shadow_fraction == 0.5  # stage 0's, from the fixed-share spec
    assert [path for _, path, _ in api.seen if path != PREFIX] == [f"{PREFIX}/start", f"{PREFIX}/weight"]


def test_errors_carry_the_status_and_the_apis_message() -> None:
    api = Api()
    with client(api, token="wrong") as admin, pytest.raises(AdminCallError, match="401: invalid bearer") as info:
        admin.status()
    assert info.value.status == 401
    with client(api) as admin:
        admin.start("first")
        with pytest.raises(AdminCallError, match="409: controller refused: cannot start") as info:
            admin.start("second")
    assert info.value.status == 409


def test_confirm_posts_the_reason_and_a_refusal_names_why() -> None:
    api = Api()
    with client(api) as admin:
        admin.start("ship v2")
        with pytest.raises(AdminCallError, match="stage 1 does not ask for a confirmation") as refused:
            admin.confirm("QA signed off")
    assert refused.value.status == 409
    assert api.seen[-1] == ("POST", f"{PREFIX}/confirm", {"reason": "QA signed off", "actor": "ops"})


def test_a_bad_value_is_refused_before_any_call() -> None:
    api = Api()
    with client(api) as admin, pytest.raises(ValueError, match="weight"):
        admin.set_weight(1.5, reason="typo")
    assert api.seen == []


def test_an_unreachable_api_is_one_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    admin = AdminClient("http://nowhere", "t", transport=httpx.MockTransport(refuse))
    with admin, pytest.raises(AdminCallError, match="cannot reach http://nowhere") as info:
        admin.status()
    assert info.value.status is None
