"""The canary router: the Ray Serve ingress in front of the teacher and student deployments.

Hot path (kept lean: plain Starlette request, pydantic-core parsing, no FastAPI): bound the
body, validate, choose a variant (sticky by routing key, else a weighted coin), call that
model, fail over to the teacher if the student errors or times out, answer. Model calls go
over the models' stream lanes (serving/stream.py, about 1 ms cheaper than a Serve handle call)
through a CoalescingClient (requests ready in the same loop turn share one call: the hop, not
the inputs, is what costs). Everything else is off the critical path: metrics and
observations are recorded after the answer is sent, shadow comparisons run as bounded background
tasks (dropped and counted when all slots are busy), observations go to the controller in
batches from a background loop, and the weight is polled from the controller, keeping the last
known routing when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from rollout.evidence import Observation, Variant
from rollout.views import PublishedRouting
from serving.admin_api import DOC_PATHS, PREFIX, build_admin_app, call_asgi
from serving.answer import ModelAnswer, prediction_payload
from serving.config import RouterConfig
from serving.limits import TokenBucket
from serving.model import CoalescingClient
from serving.routing import Chooser, other, top1_agreement, total_variation
from serving.schemas import MAX_INPUTS, MAX_KEY_CHARS, PredictRequest, first_error
from serving.stream import StreamClient

log = logging.getLogger("ray.serve")

PREDICT_PATH = "/v1/predict"
ROUTING_KEY_HEADER = "x-routing-key"
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


@dataclass(frozen=True, slots=True)
class Done:
    """An answered predict request, as the after-response bookkeeping needs it."""

    answer: ModelAnswer
    outcome: str  # ok | failover
    latency_s: float
    texts: list[str]
    observations: list[Observation]
    shadow_fraction: float


@serve.deployment(
    name="router",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=128,
    logging_config={"enable_access_log": False},
)
class Router:
    def __init__(
        self,
        teacher: DeploymentHandle[Any],
        student: DeploymentHandle[Any],
        controller: DeploymentHandle[Any],
        config: RouterConfig,
    ) -> None:
        from serving.metrics import RouterMetrics  # Ray metrics bind to the replica process

        self._config = config
        most = MAX_INPUTS if config.coalesce_calls else 1  # 1: every request its own call
        self._models = {
            Variant.TEACHER: CoalescingClient(_model_call(teacher, config), most),
            Variant.STUDENT: CoalescingClient(_model_call(student, config), most),
        }
        self._timeouts = {Variant.TEACHER: config.teacher_timeout_s, Variant.STUDENT: config.student_timeout_s}
        self._controller = controller
        self._admin_app = build_admin_app(controller)
        self._chooser = Chooser(random.Random(config.seed))
        limit = config.max_requests_per_s
        self._admission = TokenBucket(limit, max(1.0, limit * config.burst_s)) if limit else None
        self._routing = PublishedRouting(
            weight_percent=config.initial_weight * 100.0, shadow_fraction=config.initial_shadow_fraction, version=0
        )
        self._weight = config.initial_weight
        self._pending: list[Observation] = []
        self._free_shadow_slots = config.shadow_concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics = RouterMetrics()
        self._metrics.set_weight(self._weight)
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._poll_forever()), loop.create_task(self._flush_forever())]

    # --- HTTP dispatch ----------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        path = _relative_path(request)
        try:
            if path == PREDICT_PATH:
                _require_method(request, "POST")
                return await self._predict(request)
            if path == PREFIX or path.startswith(PREFIX + "/") or path in DOC_PATHS:
                return await self._admin(request)
            raise RouterError(404, None, f"no route {path}; try POST {PREDICT_PATH}")
        except RouterError as exc:
            self._metrics.record_rejected(exc.status)
            headers = {401: {"www-authenticate": "Bearer"}, 429: {"retry-after": "1"}}.get(exc.status)
            detail = f"{exc.field}: {exc.message}" if exc.field else exc.message
            return json_response({"detail": detail, "field": exc.field}, exc.status, headers)

    # --- predict ------------------------------------------------------------------------------

    async def _predict(self, request: Request) -> Response:
        started = time.perf_counter()
        if self._admission is not None and not self._admission.take():
            wait = f"{self._admission.retry_after_s():.2f}"
            raise RouterError(
                429, None, f"over this router's limit of {self._admission.rate:g} requests/s; retry in {wait} s"
            )
        texts, key = await self._parse(request)
        routing = self._routing
        answer, outcome, observations = await self._answer(self._chooser.choose(self._weight, key), texts)
        done = Done(answer, outcome, time.perf_counter() - started, texts, observations, routing.shadow_fraction)
        payload = {
            "predictions": prediction_payload(answer),
            "variant": answer.variant.value,
            "model_id": answer.model_id,
            "request_id": uuid.uuid4().hex,
        }
        headers = {VERSION_HEADER: str(routing.version)}
        return json_response(payload, headers=headers, background=BackgroundTask(self._after, done))

    async def _parse(self, request: Request) -> tuple[list[str], str | None]:
        """The inputs and the routing key (body field, else header), or a 4xx naming the field."""
        try:
            parsed = PredictRequest.model_validate_json(await self._body(request))
        except ValidationError as exc:
            raise RouterError(422, *first_error(exc)) from exc
        key = parsed.routing_key or request.headers.get(ROUTING_KEY_HEADER)
        if key is not None and not 0 < len(key) <= MAX_KEY_CHARS:
            raise RouterError(422, "X-Routing-Key", f"must be 1 to {MAX_KEY_CHARS} characters")
        return list(parsed.inputs), key

    async def _after(self, done: Done) -> None:
        """Bookkeeping the client need not wait for: Starlette runs it once the answer is sent."""
        self._metrics.record_request(done.answer.variant, done.outcome, done.latency_s)
        if done.outcome == "ok" and self._chooser.sample(done.shadow_fraction):
            self._start_shadow(done.answer, done.texts, done.observations)
        else:
            self._pending.extend(done.observations)

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

    async def _call(self, variant: Variant, texts: list[str]) -> tuple[ModelAnswer, float]:
        started = time.perf_counter()
        async with asyncio.timeout(self._timeouts[variant]):  # unlike wait_for, no extra task per call
            answer = await self._models[variant].submit(texts)
        return answer, time.perf_counter() - started

    async def _answer(self, variant: Variant, texts: list[str]) -> tuple[ModelAnswer, str, list[Observation]]:
        """The answer to send, its outcome (ok | failover), and the observations it produced."""
        observations: list[Observation] = []
        outcome = "ok"
        if variant is Variant.STUDENT:
            started = time.perf_counter()
            try:
                answer, latency = await self._call(variant, texts)
                return answer, outcome, [_observe(answer, latency)]
            except Exception as exc:  # any student failure: the teacher answers instead
                reason = "timeout" if isinstance(exc, TimeoutError) else "error"
                self._metrics.record_failover(reason)
                log.warning("student failed (%s: %s); failing over to the teacher", reason, type(exc).__name__)
                latency = time.perf_counter() - started
                observations.append(Observation(variant=Variant.STUDENT, latency_s=latency, error=True))
                outcome = "failover"
        started = time.perf_counter()
        try:
            answer, latency = await self._call(Variant.TEACHER, texts)
        except Exception as exc:  # the teacher's own errors are evidence too (the error gate compares)
            log.error("teacher failed: %s", type(exc).__name__)
            failed = Observation(variant=Variant.TEACHER, latency_s=time.perf_counter() - started, error=True)
            self._pending.extend([*observations, failed])
            raise RouterError(503, None, "the model is unavailable; retry later") from exc
        observations.append(_observe(answer, latency))
        return answer, outcome, observations

    # --- shadow -------------------------------------------------------------------------------

    def _start_shadow(self, primary: ModelAnswer, texts: list[str], observations: list[Observation]) -> None:
        if self._free_shadow_slots <= 0:
            self._metrics.record_shadow_dropped("overload")
            self._pending.extend(observations)
            return
        self._free_shadow_slots -= 1
        task = asyncio.get_running_loop().create_task(self._shadow(primary, texts, observations))
        self._tasks.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._free_shadow_slots += 1

    async def _shadow(self, primary: ModelAnswer, texts: list[str], observations: list[Observation]) -> None:
        variant = other(primary.variant)
        started = time.perf_counter()
        try:
            shadow, latency = await self._call(variant, texts)
        except Exception:
            self._metrics.record_shadow_dropped("error")
            failed = Observation(variant=variant, latency_s=time.perf_counter() - started, error=True)
            self._pending.extend([*observations, failed])
            return
        agree = top1_agreement(primary.probabilities, shadow.probabilities)
        divergence = total_variation(primary.probabilities, shadow.probabilities)
        self._metrics.record_comparison(int(agree.sum()), divergence.tolist())
        agreed = bool(agree.all())  # one verdict per request; agreement goes on the student's observation
        for obs in [*observations, _observe(shadow, latency)]:
            self._pending.append(obs.model_copy(update={"agreed": agreed}) if obs.variant is Variant.STUDENT else obs)

    # --- controller I/O (background) ------------------------------------------------------

    async def _poll_forever(self) -> None:
        handle = self._controller.options(method_name="routing")
        timeout = max(1.0, 4 * self._config.poll_interval_s)
        while True:
            try:
                routing: PublishedRouting = await asyncio.wait_for(handle.remote(), timeout)
                if routing.version >= self._routing.version:
                    self._adopt(routing)
            except Exception as exc:  # keep the last known routing
                log.debug("controller unreachable (%s); keeping weight %.3f", type(exc).__name__, self._weight)
            self._metrics.set_weight(self._weight)  # every poll: Ray drops a gauge left unset for ~20 s
            await asyncio.sleep(self._config.poll_interval_s)

    def _adopt(self, routing: PublishedRouting) -> None:
        self._routing = routing
        self._weight = routing.weight_percent / 100.0

    async def _flush_forever(self) -> None:
        handle = self._controller.options(method_name="record")
        cap = self._config.flush_max_observations
        while True:
            await asyncio.sleep(self._config.flush_interval_s)
            if len(self._pending) > 20 * cap:  # controller unreachable for a while: keep the newest
                del self._pending[: len(self._pending) - 20 * cap]
            while self._pending:
                batch, self._pending = self._pending[:cap], self._pending[cap:]
                try:
                    await asyncio.wait_for(handle.remote(batch), timeout=5.0)
                except Exception as exc:
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


def _model_call(handle: DeploymentHandle[Any], config: RouterConfig) -> Callable[[list[str]], Awaitable[ModelAnswer]]:
    """How the router calls one model's `predict`: over stream lanes, or through the handle
    (texts in, ModelAnswer out, which plain pickle does without cloudpickle's per-call work)."""
    predict = handle.options(request_serialization="pickle", response_serialization="pickle")
    client = StreamClient(predict)
    return client if config.model_transport == "stream" else client.via_handle


def _relative_path(request: Request) -> str:
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path.rstrip("/") or "/"


def _require_method(request: Request, method: str) -> None:
    if request.method != method:
        raise RouterError(405, None, f"{request.method} not allowed here; use {method}")


def _observe(answer: ModelAnswer, latency_s: float) -> Observation:
    return Observation(variant=answer.variant, latency_s=latency_s, cost=answer.cost_dollars)
