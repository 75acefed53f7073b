"""The canary router: the Ray Serve ingress in front of the teacher and student deployments.

A thin shell over `RouterCore` (serving/router_core.py: choose, call, fail over, shadow,
observations; no Ray). This file owns what needs Ray or HTTP: the model handles and Ray
metrics it hands the core, HTTP dispatch, admission, parsing, the admin proxy, the two
background loops, and the mapping of the core's errors to HTTP answers.

Feedback (`POST /v1/feedback`, its own bearer token) is checked and parsed here and handed to
the controller, which opens the signed request ids and judges the labels; predict never waits
on it. The key that signs request ids is the controller's, fetched by the poll loop.

A predict request may choose its model with `X-Kdcanary-Variant: student|teacher` and the force
token (`KDCANARY_FORCE_TOKEN`) as its bearer token: QA sent to the student on purpose, support
reproducing what the teacher says. Such answers, and those of the spec's `dogfood_keys`, are
counted (`ray_kdcanary_forced_requests_total`) but never judged: they were not drawn at random.

Hot path (kept lean: plain Starlette request, pydantic-core parsing, no FastAPI): bound the
body, validate, let the core answer, send. Model calls go over the models' stream lanes
(serving/stream.py, about 1 ms cheaper than a Serve handle call) through a CoalescingClient
(requests ready in the same loop turn share one call: the hop, not the inputs, is what costs).
Everything else is off the critical path: the core's bookkeeping (metrics, observations, shadow
calls) runs after the answer is sent, observations go to the controller in batches from a
background loop, and the routing comes from a request the controller holds until it changes,
keeping the last known routing when the controller cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from rollout.evidence import Variant
from rollout.views import PublishedRouting
from serving.admin import FEEDBACK, FORCE, authorize
from serving.admin_api import DOC_PATHS, PREFIX, build_admin_app, call_asgi, controller_refusal
from serving.answer import prediction_payload
from serving.config import RouterConfig
from serving.error_table import lookup
from serving.errors import AdminAuthError, ModelCallError
from serving.limits import TokenBucket
from serving.model import CoalescingClient
from serving.router_core import ModelCall, RouterCore
from serving.schemas import MAX_INPUTS, MAX_KEY_CHARS, PredictRequest, feedback_items, first_error
from serving.stream import StreamClient

log = logging.getLogger("ray.serve")

CONTROLLER_CALL_TIMEOUT_S = 1.0  # beyond a held request's wait: the controller is unreachable
PREDICT_PATH = "/v1/predict"
FEEDBACK_PATH = "/v1/feedback"
FEEDBACK_TIMEOUT_S = 10.0
ROUTING_KEY_HEADER = "x-routing-key"
VARIANT_HEADER = "x-kdcanary-variant"  # student | teacher, with the force token (QA, support, debugging)
VERSION_HEADER = "x-kdcanary-routing-version"


class RouterError(Exception):
    """An HTTP answer other than 200, raised inside the router and turned into a response."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None, background: BackgroundTask | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=headers, background=background)


@serve.deployment(
    name="router",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=128,
    logging_config={"enable_access_log": False},
)
class Router:
    def __init__(
        self, teacher: DeploymentHandle[Any], student: DeploymentHandle[Any], controller: DeploymentHandle[Any]
    ) -> None:
        from serving.metrics import RouterMetrics  # Ray metrics bind to the replica process

        # One lane client per model for the replica's life (a reconfigure keeps it and its discovery).
        self._lanes = {Variant.TEACHER: _stream_client(teacher), Variant.STUDENT: _stream_client(student)}
        self._clock = time.perf_counter
        self._metrics = RouterMetrics()
        self._config = RouterConfig()
        self._core = RouterCore(
            self._model_calls(), self._config, self._clock, random.Random(), self._metrics, wall=time.time
        )
        self._admission = self._limit()
        self._controller = controller
        self._admin_app = build_admin_app(controller)
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._poll_forever()), loop.create_task(self._flush_forever())]

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Router settings (`RouterConfig`) are the deployment's user_config: `serve deploy` changes
        them in place; the routing, pending observations and calls in flight are kept."""
        self._config = RouterConfig.model_validate(user_config or {})
        self._core.configure(self._config, self._model_calls())
        if self._config.seed is not None:
            self._core.reseed(self._config.seed)
        self._admission = self._limit()

    def _model_calls(self) -> dict[Variant, ModelCall]:
        most = MAX_INPUTS if self._config.coalesce_calls else 1  # 1: every request its own call
        stream = self._config.model_transport == "stream"
        return {
            variant: CoalescingClient(lane if stream else lane.via_handle, most).submit
            for variant, lane in self._lanes.items()
        }

    def _limit(self) -> TokenBucket | None:
        limit = self._config.max_requests_per_s
        return TokenBucket(limit, max(1.0, limit * self._config.burst_s)) if limit else None

    # --- HTTP dispatch ----------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        path = _relative_path(request)
        try:
            if path == PREDICT_PATH:
                _require_method(request, "POST")
                return await self._predict(request)
            if path == FEEDBACK_PATH:
                _require_method(request, "POST")
                return await self._feedback(request)
            if path == PREFIX or path.startswith(PREFIX + "/") or path in DOC_PATHS:
                return await self._admin(request)
            raise RouterError(404, None, f"no route {path}; try POST {PREDICT_PATH} or POST {FEEDBACK_PATH}")
        except RouterError as exc:
            self._metrics.record_rejected(exc.status)
            retry = {"retry-after": "1"}
            headers = {401: {"www-authenticate": "Bearer"}, 429: retry, 503: retry}.get(exc.status)
            detail = f"{exc.field}: {exc.message}" if exc.field else exc.message
            return json_response({"detail": detail, "field": exc.field}, exc.status, headers)

    # --- predict ------------------------------------------------------------------------------

    async def _predict(self, request: Request) -> Response:
        started = self._clock()  # the latency metric counts admission and parsing too
        if self._admission is not None and not self._admission.take():
            wait = f"{self._admission.retry_after_s():.2f}"
            raise RouterError(
                429, None, f"over this router's limit of {self._admission.rate:g} requests/s; retry in {wait} s"
            )
        forced = _forced_variant(request)
        texts, key, segment = await self._parse(request)
        try:
            answered = await self._core.answer(texts, key, started, segment, forced)
        except ModelCallError as exc:  # the teacher failed: nothing left to answer with
            raise RouterError(lookup(exc).http_status, None, "the model is unavailable; retry later") from exc
        payload = {
            "predictions": prediction_payload(answered.answer),
            "variant": answered.answer.variant.value,
            "model_id": answered.answer.model_id,
            "request_id": answered.request_id,
        }
        headers = {VERSION_HEADER: str(answered.routing.version)}
        return json_response(payload, headers=headers, background=BackgroundTask(self._core.after, answered))

    # --- feedback -----------------------------------------------------------------------------

    async def _feedback(self, request: Request) -> Response:
        """Labels for earlier answers: authenticated, parsed, then judged by the controller."""
        try:
            return await self._take_feedback(request)
        except RouterError as exc:
            self._metrics.record_feedback_refused(exc.status)
            raise

    async def _take_feedback(self, request: Request) -> Response:
        try:
            authorize(request.headers.get("authorization"), credential=FEEDBACK)
        except AdminAuthError as exc:
            raise RouterError(401, None, str(exc)) from exc
        try:
            items = feedback_items(await self._body(request))
        except ValidationError as exc:
            raise RouterError(422, *first_error(exc)) from exc
        handle = self._controller.options(method_name="feedback")
        try:
            async with asyncio.timeout(FEEDBACK_TIMEOUT_S):
                result = await handle.remote(items)
        except Exception as exc:
            status, message = controller_refusal("feedback", exc)
            raise RouterError(status, None, message) from exc
        self._metrics.record_feedback(result.labels)
        return json_response(result.model_dump())

    async def _parse(self, request: Request) -> tuple[list[str], str | None, str | None]:
        """The inputs, the routing key (body field, else header) and the segment, or a 4xx naming the field."""
        try:
            parsed = PredictRequest.model_validate_json(await self._body(request))
        except ValidationError as exc:
            raise RouterError(422, *first_error(exc)) from exc
        key = parsed.routing_key or request.headers.get(ROUTING_KEY_HEADER)
        if key is not None and not 0 < len(key) <= MAX_KEY_CHARS:
            raise RouterError(422, "X-Routing-Key", f"must be 1 to {MAX_KEY_CHARS} characters")
        return list(parsed.inputs), key, parsed.segment

    def _check_declared_size(self, request: Request) -> None:
        limit = self._config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RouterError(413, "body", f"{declared} bytes is over the limit of {limit}")

    async def _body(self, request: Request) -> bytes:
        limit = self._config.max_body_bytes
        self._check_declared_size(request)
        body = await request.body()
        if len(body) > limit:
            raise RouterError(413, "body", f"{len(body)} bytes is over the limit of {limit}")
        return body

    # --- controller I/O (background) ------------------------------------------------------

    async def _poll_forever(self) -> None:
        """Ask for the routing with the one last received: the controller holds the request until
        its routing differs (serving/long_poll.py), so a change arrives at once and an idle router
        asks about every `routing_wait_s`. After any answer or failure, `poll_interval_s` passes
        before the next request (no tight loop when an answer is not taken)."""
        handle = self._controller.options(method_name="routing_change")
        known: PublishedRouting | None = None
        while True:
            wait_s = self._config.routing_wait_s
            try:
                async with asyncio.timeout(wait_s + CONTROLLER_CALL_TIMEOUT_S):  # not wait_for: it can swallow a cancel
                    routing: PublishedRouting = await handle.remote(known, wait_s)
                known = routing
                self._core.adopt(routing)  # ignored when older than the routing in use
                if not self._core.has_receipt_key:  # once: the key never changes
                    async with asyncio.timeout(CONTROLLER_CALL_TIMEOUT_S):
                        key = await self._controller.options(method_name="receipt_key").remote()
                    self._core.set_receipt_key(bytes.fromhex(key))
            except Exception as exc:  # keep the last known routing; ask afresh next time
                known = None
                log.debug("controller unreachable (%s); keeping weight %.3f", type(exc).__name__, self._core.weight)
            self._metrics.set_weight(self._core.weight)  # every answer: Ray drops a gauge left unset for ~20 s
            await asyncio.sleep(self._config.poll_interval_s)

    async def _flush_forever(self) -> None:
        handle = self._controller.options(method_name="record")
        while True:
            await asyncio.sleep(self._config.flush_interval_s)
            for batch in self._core.take_pending(self._config.flush_max_observations):
                try:
                    async with asyncio.timeout(5.0):
                        await handle.remote(batch)
                except Exception as exc:  # the rest wait for the next round
                    log.debug("could not report %d observations (%s)", len(batch), type(exc).__name__)
                    break

    # --- admin (FastAPI, off the hot path) -------------------------------------------------

    async def _admin(self, request: Request) -> Response:
        self._check_declared_size(request)  # FastAPI reads the body before it checks the token
        status, headers, body = await call_asgi(self._admin_app, request.scope, request.receive)
        if 400 <= status < 500:
            self._metrics.record_rejected(status)
        response = Response(body, status_code=status)
        response.raw_headers = headers
        return response


def _stream_client(handle: DeploymentHandle[Any]) -> StreamClient:
    """One model's lanes, with its handle as the fallback (texts in, ModelAnswer out, which plain
    pickle does without cloudpickle's per-call work)."""
    return StreamClient(handle.options(request_serialization="pickle", response_serialization="pickle"))


def _relative_path(request: Request) -> str:
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path.rstrip("/") or "/"


def _require_method(request: Request, method: str) -> None:
    if request.method != method:
        raise RouterError(405, None, f"{request.method} not allowed here; use {method}")


def _forced_variant(request: Request) -> Variant | None:
    """The variant X-Kdcanary-Variant asks for, honoured only with the force token (a 401
    otherwise, never silently ignored); None without the header."""
    asked = request.headers.get(VARIANT_HEADER)
    if asked is None:
        return None
    if asked not in (Variant.STUDENT.value, Variant.TEACHER.value):
        raise RouterError(422, "X-Kdcanary-Variant", f"must be 'student' or 'teacher', got {asked[:40]!r}")
    try:
        authorize(request.headers.get("authorization"), credential=FORCE)
    except AdminAuthError as exc:
        raise RouterError(401, None, f"X-Kdcanary-Variant needs the force token: {exc}") from exc
    return Variant(asked)
