"""AdminClient: the admin API over HTTP, typed both ways (and FeedbackClient: labels for
earlier answers, with the feedback token).

Requests are the API's own body models (`serving.schemas`), answers are parsed into the
models the routes declare (`rollout.views.StatusView`, `rollout.events.Event`). The CLI
(`kdcanary rollout ...`), the demo, the drills, the benchmarks and the tests all drive a
rollout through this one class.

    with AdminClient("http://127.0.0.1:8000", token) as admin:
        admin.start(reason="ship minilm-l2")
        admin.set_weight(0.05, reason="hold 5 % over the weekend")
        print(admin.status().phase)

    with FeedbackClient("http://127.0.0.1:8000", feedback_token) as feedback:
        feedback.send([FeedbackItem(request_id=answer["request_id"], label="positive")])
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import BaseModel, TypeAdapter

from rollout.disagreements import LoggedDisagreement
from rollout.events import Event
from rollout.feedback import FeedbackItem, FeedbackResult
from rollout.status import SETTLED_PHASES, Phase, PromoteTarget
from rollout.views import StatusView
from serving.schemas import AdminNote, PromoteRequest, RollbackRequest, WeightUpdate

PREFIX = "/admin/rollout"
_DISAGREEMENTS = TypeAdapter(list[LoggedDisagreement])
_EVENTS = TypeAdapter(list[Event])


class AdminCallError(Exception):
    """The admin API answered with an error, or could not be reached; `status` is the HTTP
    status when there was an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _ApiClient:
    """An application's HTTP API at `base_url` (its route prefix) with a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        actor: str = "admin-api",
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,  # unit tests answer in process
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s, transport=transport)
        self.actor = actor

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminCallError(f"cannot reach {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise AdminCallError(f"{method} {path} answered {response.status_code}: {detail}", response.status_code)
        return response.json()


class FeedbackClient(_ApiClient):
    """`POST /v1/feedback`: labels for answers given earlier (one batch is taken all or nothing)."""

    def send(self, items: list[FeedbackItem]) -> FeedbackResult:
        body = [item.model_dump(mode="json") for item in items]
        return FeedbackResult.model_validate(self._call("POST", "/v1/feedback", json=body))


class AdminClient(_ApiClient):
    """One rollout's admin API at `base_url` (the application's route prefix)."""

    # --- reads ----------------------------------------------------------------------------------

    def status(self) -> StatusView:
        return StatusView.model_validate(self._call("GET", PREFIX))

    def events(self, after: int = 0, limit: int = 100) -> list[Event]:
        return _EVENTS.validate_python(self._call("GET", f"{PREFIX}/events", params={"after": after, "limit": limit}))

    def disagreements(self, after: int = 0, limit: int = 1000) -> list[LoggedDisagreement]:
        """The disagreement log with seq > `after`, oldest first (empty when the spec keeps none)."""
        found = self._call("GET", f"{PREFIX}/disagreements", params={"after": after, "limit": limit})
        return _DISAGREEMENTS.validate_python(found)

    # --- intents (each answers the status after it) ------------------------------------------------

    def start(self, reason: str = "") -> StatusView:
        return self._intent("POST", "start", AdminNote(reason=reason, actor=self.actor))

    def pause(self, reason: str = "") -> StatusView:
        return self._intent("POST", "pause", AdminNote(reason=reason, actor=self.actor))

    def resume(self, reason: str = "") -> StatusView:
        return self._intent("POST", "resume", AdminNote(reason=reason, actor=self.actor))

    def promote(self, to_full: bool = False, reason: str = "") -> StatusView:
        body = PromoteRequest(reason=reason, actor=self.actor, to=PromoteTarget.FULL if to_full else PromoteTarget.NEXT)
        return self._intent("POST", "promote", body)

    def confirm(self, reason: str) -> StatusView:
        """Let the rollout enter the next stage, one that waits for a confirmation."""
        return self._intent("POST", "confirm", AdminNote(reason=reason, actor=self.actor))

    def rollback(self, reason: str) -> StatusView:
        return self._intent("POST", "rollback", RollbackRequest(reason=reason, actor=self.actor))

    def set_weight(self, weight: float, reason: str) -> StatusView:
        """Pin the student's share (0..1), pausing progression; `resume` withdraws it."""
        return self._intent("PUT", "weight", WeightUpdate(weight=weight, reason=reason, actor=self.actor))

    def pin(self, weight: float, reason: str, within_s: float = 30.0) -> StatusView:
        """A fixed share, as an operator holds one: start a rollout when none is live, pin `weight`,
        and return the status once the controller publishes it (routers adopt it at their next
        poll). With `rollout.spec.fixed_share_spec` nothing but an operator moves it again."""
        view = self.status()
        if not view.started or view.phase in SETTLED_PHASES:
            self.start(reason)
        self.set_weight(weight, reason)
        deadline = time.monotonic() + within_s
        while not _pinned(view := self.status(), weight):
            if time.monotonic() > deadline:
                raise AdminCallError(f"the controller did not pin weight {weight} within {within_s} s: {view.message}")
            time.sleep(0.1)
        return view

    # --- plumbing ---------------------------------------------------------------------------------

    def _intent(self, method: str, action: str, body: BaseModel) -> StatusView:
        answer = self._call(method, f"{PREFIX}/{action}", json=body.model_dump(mode="json", exclude_none=True))
        return StatusView.model_validate(answer)


def _pinned(view: StatusView, weight: float) -> bool:
    return view.phase is Phase.PAUSED and math.isclose(view.routing.weight, weight)
