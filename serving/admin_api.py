"""The admin API under /admin/rollout: a FastAPI app mounted inside the router.

Predict stays on the router's plain-Starlette hot path; admin calls are rare, so they go
through FastAPI for typed bodies, 4xx answers that name the field, and an OpenAPI document
(`GET /openapi.json`, browsable at `/docs`; both public, they describe the API and hold no
state). Every route under /admin/rollout needs the bearer token (`serving.admin.authorize`:
constant-time comparison, the token never logged nor echoed).

Endpoints record intents and return the controller's status (`StatusView`, declared as each
route's response model, so it is in the OpenAPI document); the controller's tick acts on them.
`serving.admin_client.AdminClient` is the typed client. `actor` in a body names who asked (it
goes into the event log); the token never does.

    GET  /admin/rollout                  status: phase, stage, weight, gates, ETA
    GET  /admin/rollout/events           the event log (after=<id>, limit=<n>)
    GET  /admin/rollout/disagreements    the disagreement log, when the spec keeps one (after=<seq>, limit=<n>)
    POST /admin/rollout/start            begin a rollout at stage 0 (shadow)
    POST /admin/rollout/pause            hold the weight; rollbacks still fire
    POST /admin/rollout/resume           withdraw a pause or a manual weight
    POST /admin/rollout/promote          next stage, or {"to": "full"}
    POST /admin/rollout/confirm          let the rollout enter the next stage (one with `confirm`)
    POST /admin/rollout/rollback         weight 0 now; a reason is required
    PUT  /admin/rollout/weight           manual weight (0..1), pauses progression; reason required
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope

from rollout.disagreements import LoggedDisagreement
from rollout.events import Event
from rollout.status import PromoteTarget
from rollout.views import StatusView
from serving.admin import authorize
from serving.error_table import UNKNOWN, lookup, one_line
from serving.errors import AdminAuthError
from serving.schemas import AdminNote, PromoteRequest, RollbackRequest, WeightUpdate

log = logging.getLogger("ray.serve")

PREFIX = "/admin/rollout"
DOC_PATHS = ("/openapi.json", "/docs")

_BEARER = HTTPBearer(auto_error=False)


def _require_token(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]) -> None:
    """The `Security` parameter documents the scheme in OpenAPI; the check is `authorize`."""
    try:
        authorize(request.headers.get("authorization"))
    except AdminAuthError as exc:
        raise HTTPException(lookup(exc).http_status, str(exc), headers={"www-authenticate": "Bearer"}) from exc


def controller_refusal(method: str, exc: Exception) -> tuple[int, str]:
    """(HTTP status, one-line message) for a controller call that raised: its own error's row in
    the error table, or 503 when the actor died or the call failed (an outage, not a refusal)."""
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    answer = lookup(cause)
    if answer is UNKNOWN:
        log.warning("controller call %s failed: %s", method, type(cause).__name__)
        return answer.http_status, f"controller unavailable ({type(cause).__name__}); retry"
    return answer.http_status, f"controller refused: {one_line(cause)}"


def build_admin_app(controller: DeploymentHandle[Any]) -> FastAPI:
    """The FastAPI app serving the admin routes against `controller` (the RolloutDeployment's handle)."""
    app = FastAPI(
        title="kdcanary admin API",
        version="1",
        description=__doc__,
        docs_url=DOC_PATHS[1],
        redoc_url=None,
        openapi_url=DOC_PATHS[0],
        dependencies=[Depends(_require_token)],
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # FastAPI's too

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await controller.options(method_name=method).remote(*args, **kwargs)
        except Exception as exc:
            raise HTTPException(*controller_refusal(method, exc)) from exc

    @app.get(
        PREFIX, response_model=StatusView, summary="Rollout status: phase, stage, weight, each gate's numbers, ETA"
    )
    async def status() -> Any:
        return await call("snapshot")

    @app.get(f"{PREFIX}/events", response_model=list[Event], summary="The append-only event log, oldest first")
    async def events(after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        return await call("events", after, limit)

    @app.get(
        f"{PREFIX}/disagreements",
        response_model=list[LoggedDisagreement],
        summary="The disagreement log (the spec's `disagreements`), oldest first, after a sequence number",
    )
    async def disagreements(
        after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 1000
    ) -> Any:
        return await call("disagreements", after, limit)

    @app.post(
        f"{PREFIX}/start", response_model=StatusView, summary="Begin a rollout at stage 0 (shadow) with fresh evidence"
    )
    async def start(note: AdminNote) -> Any:
        return await call("start", actor=note.actor, reason=note.reason)

    @app.post(
        f"{PREFIX}/pause", response_model=StatusView, summary="Hold the current weight (automatic rollbacks still fire)"
    )
    async def pause(note: AdminNote) -> Any:
        return await call("pause", actor=note.actor, reason=note.reason)

    @app.post(f"{PREFIX}/resume", response_model=StatusView, summary="Withdraw a pause or a manual weight")
    async def resume(note: AdminNote) -> Any:
        return await call("resume", actor=note.actor, reason=note.reason)

    @app.post(
        f"{PREFIX}/promote",
        response_model=StatusView,
        summary="Skip to the next stage, or to all traffic with {'to': 'full'}",
    )
    async def promote(body: PromoteRequest) -> Any:
        return await call("promote", body.to is PromoteTarget.FULL, actor=body.actor, reason=body.reason)

    @app.post(
        f"{PREFIX}/confirm",
        response_model=StatusView,
        summary="Confirm entering the next stage (a stage with confirm: true waits for this)",
    )
    async def confirm(note: AdminNote) -> Any:
        return await call("confirm", actor=note.actor, reason=note.reason)

    @app.post(f"{PREFIX}/rollback", response_model=StatusView, summary="Send the student back to 0 % now")
    async def rollback(body: RollbackRequest) -> Any:
        return await call("rollback", body.reason, actor=body.actor)

    @app.put(
        f"{PREFIX}/weight", response_model=StatusView, summary="Pin the student's weight (pauses automatic progression)"
    )
    async def weight(body: WeightUpdate) -> Any:
        log.info("admin %s sets student weight to %.4f: %s", body.actor, body.weight, body.reason)
        return await call("set_weight", body.weight, actor=body.actor, reason=body.reason)

    return app


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """422 naming the first bad field, in the router's error shape ({"detail", "field"})."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return JSONResponse({"detail": f"{field}: {first['msg']}", "field": field}, 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"detail": exc.detail, "field": None}, exc.status_code, headers=exc.headers)


async def call_asgi(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one request through an ASGI app and collect (status, headers, body)."""
    status, headers, chunks = 500, [], []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)
