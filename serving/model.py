"""ModelDeployment: one Ray Serve deployment class that serves any registry bundle by id.

Teacher and student are two deployments of this class (`.options(name=...)`), each with its
own replicas, CPUs and autoscaling. The bundle comes as the deployment's `user_config`
(`ModelUserConfig`), so `serve deploy` with another bundle swaps it in place: `reconfigure`
verifies the bundle's files against its manifest (refusing it otherwise), loads ONNX Runtime (or
torch, for FP32 bundles) with intra-op threads = its CPUs rounded up and warms up, off the event
loop, while the old bundle keeps answering; then it switches. `model_id` says what a replica
serves (the rollout controller asks every replica). `check_health` runs a real inference.

Batching waits for company only when there is some: a request that finds the replica idle is
scored at once (waiting `batch_wait_timeout_s` for arrivals that cannot come only adds latency,
and at a low canary weight that is most student requests); under load the configured wait applies.
Callers reach `predict` two ways: through the Serve handle, or over the replica's stream lane
(serving/stream.py; `stream_endpoint` says where it listens), which skips the handle's per-call
cost; the lane refuses calls past `max_ongoing_requests` and drains when Serve stops the replica.
`CoalescingClient` is the caller's side: it joins concurrent requests into one call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import ray
from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from rollout.smoke import Recorded
from serving.answer import ModelAnswer, prediction_payload, split_answer
from serving.autoscaling import STREAM_IN_FLIGHT
from serving.classifier import Classifier, load_bundle, threads_for
from serving.config import ModelConfig, ModelUserConfig
from serving.errors import ModelCallError
from serving.metrics import ModelMetrics
from serving.routing import cost_dollars, split_compute
from serving.schemas import PredictRequest, first_error
from serving.stream import Endpoint, StreamServer

log = logging.getLogger("ray.serve")
WARMUP_TEXTS = ["warm-up", "a somewhat longer sentence to warm up the kernels for wider inputs"]
REFERENCE_BATCH = 32  # a bundle answering the smoke test's file as registered: as the served ones are sent


@serve.deployment(name="model", health_check_period_s=10.0, health_check_timeout_s=30.0)
class ModelDeployment:
    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._loaded: _Loaded | None = None  # set by reconfigure, which Serve calls before any request
        self._rng = random.Random()
        self._metrics = ModelMetrics(config.variant)
        batcher: Any = self._score_batch  # serve.batch adds setters the type stubs do not show
        batcher.set_max_batch_size(config.batching.max_batch_size)
        self._batcher = batcher
        self._in_flight = 0
        replica = serve.get_replica_context().replica_id.unique_id
        self._stream = StreamServer(
            partial(self._answer, transport="stream"),
            replica,
            ray.util.get_node_ip_address(),
            busy=lambda: self._in_flight >= config.max_ongoing_requests,  # Serve's limit, both paths counted
            on_refused=self._metrics.record_refused,
        )

    async def __del__(self) -> None:
        """Serve stops this replica (scale-down, redeploy) once its handle calls are done: drain the lane too."""
        await self._stream.drain()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve the bundle `user_config` names (a `ModelUserConfig`); a no-op when it already does.
        A bundle that is unknown or fails verification raises, naming it, and Serve reports the
        deploy as failed."""
        wanted = ModelUserConfig.model_validate(user_config)
        if self._loaded is not None and self._loaded.wanted == wanted:
            return
        loaded = await asyncio.to_thread(_load, self._config, wanted)  # the old bundle keeps answering
        before, self._loaded = self._loaded, loaded
        log.info("%s serves %s (was %s)", self._config.variant, loaded.model_id, before and before.model_id)

    def model_id(self) -> str | None:
        """The bundle id this replica serves (None before its first user_config)."""
        return self._loaded.model_id if self._loaded is not None else None

    def recorded_answers(self) -> Recorded | None:
        """What this replica's bundle answered when registered (None: none recorded, or no bundle)."""
        return self._loaded.recorded if self._loaded is not None else None

    async def registered_answers(self, texts: list[str], labels: list[int]) -> Recorded:
        """What this replica's bundle answers on `texts` as registered (its ONNX model and its own
        preprocessing, whatever runtime or max_length it is served with): the smoke test's
        reference for inputs the spec names."""
        model = self._model
        registered = await asyncio.to_thread(Classifier, model.classifier.bundle, threads_for(self._config.cpus))
        predictions = tuple(await asyncio.to_thread(registered.top1, texts, REFERENCE_BATCH))
        return Recorded(model_id=model.model_id, texts=tuple(texts), labels=tuple(labels), predictions=predictions)

    def label_names(self) -> tuple[str, ...] | None:
        """The labels this replica answers with, in id order (None before its first user_config)."""
        return tuple(self._loaded.classifier.label_names) if self._loaded is not None else None

    @property
    def _model(self) -> _Loaded:
        if self._loaded is None:
            variant = self._config.variant.value
            raise ModelCallError(f"{variant}: no bundle; set user_config {{bundle: ...}} on deployment '{variant}'")
        return self._loaded

    async def predict(self, texts: list[str]) -> ModelAnswer:
        """The Serve handle's method (the stream lane calls `_answer` directly)."""
        return await self._answer(texts, "handle")

    async def _answer(self, texts: list[str], transport: str) -> ModelAnswer:
        self._metrics.record_call(transport)
        await self._chaos()
        self._in_flight += 1
        try:
            # Read by the batcher when this request opens a batch: alone, there is nothing to wait for.
            busy = self._in_flight > 1
            self._batcher.set_batch_wait_timeout_s(self._config.batching.batch_wait_timeout_s if busy else 0.0)
            answer: ModelAnswer = await self._score_batch(texts)
        finally:
            self._in_flight -= 1
        return answer

    async def _chaos(self) -> None:
        """Drill and test hooks (both 0 in production): injected delay, then injected fault."""
        if self._config.chaos_delay_s:
            await asyncio.sleep(self._config.chaos_delay_s)
        if self._config.chaos_error_rate and self._rng.random() < self._config.chaos_error_rate:
            raise ModelCallError(f"{self._config.variant} {self._model.model_id}: injected fault (chaos_error_rate)")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _score_batch(self, requests: list[list[str]]) -> list[ModelAnswer]:
        model = self._model  # one bundle for the whole batch, even if a swap lands meanwhile
        flat = [text for texts in requests for text in texts]
        scored = model.classifier.score(flat)
        dollars = cost_dollars(scored.compute_s, self._config.cpus, self._config.price_per_cpu_hour)
        self._metrics.record_batch(len(flat), scored.compute_s, dollars)
        sizes = [len(texts) for texts in requests]
        shares = split_compute(scored.compute_s, sizes)
        answers, start = [], 0
        for size, share in zip(sizes, shares, strict=True):
            answers.append(
                ModelAnswer(
                    model_id=model.model_id,
                    variant=self._config.variant,
                    label_names=model.classifier.label_names,
                    probabilities=scored.probabilities[start : start + size],
                    compute_s=share,
                    cost_dollars=dollars * size / len(flat),
                )
            )
            start += size
        return answers

    async def __call__(self, request: Request) -> Response:
        """Plain HTTP on the deployment itself (no router): the benchmark's `direct` baseline."""
        try:
            parsed = PredictRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            field, message = first_error(exc)
            return Response(json.dumps({"detail": f"{field}: {message}", "field": field}), 422)
        answer = await self.predict(list(parsed.inputs))
        payload = {
            "predictions": prediction_payload(answer),
            "variant": answer.variant.value,
            "model_id": answer.model_id,
            "request_id": uuid.uuid4().hex,
        }
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")

    async def stream_endpoint(self) -> Endpoint:
        """Where this replica's stream lane listens (started on the first ask)."""
        return await self._stream.endpoint()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Lane calls bypass Serve's request counting; serving/autoscaling.py adds them back."""
        return {STREAM_IN_FLIGHT: float(self._stream.in_flight)}

    def check_health(self) -> None:
        """A real inference; raising marks the replica unhealthy and Serve replaces it."""
        model = self._model
        probabilities = model.classifier.score(["health check"]).probabilities
        if probabilities.shape != (1, len(model.classifier.label_names)) or not np.isfinite(probabilities).all():
            raise ModelCallError(f"{model.model_id}: health check got unusable output {probabilities!r}")


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A loaded, warmed-up bundle; swapped whole, so a batch never mixes two bundles."""

    wanted: ModelUserConfig
    model_id: str
    classifier: Classifier
    recorded: Recorded | None  # the bundle's answers at registration (the smoke test's reference)


def _load(config: ModelConfig, wanted: ModelUserConfig) -> _Loaded:
    bundle = load_bundle(config.registry, wanted.bundle, wanted.runtime)
    classifier = Classifier(bundle, threads_for(config.cpus), wanted.runtime, wanted.max_length)
    for _ in range(3):
        classifier.score(WARMUP_TEXTS)
    answers = bundle.recorded_answers()
    recorded = None
    if answers is not None:
        recorded = Recorded(
            model_id=bundle.id,
            texts=tuple(answers.texts),
            labels=tuple(answers.labels),
            predictions=tuple(answers.predictions),
        )
    return _Loaded(wanted, bundle.id, classifier, recorded)


class CoalescingClient:
    """Calls one model's `predict` for many concurrent requests (router side).

    Every call costs about the same whatever it carries (a frame or a handle call, in the router
    and in the replica: per-call work dominates), so requests that reach the router in the same
    event-loop turn go to the model as one call and each gets its slice back. A lone request
    goes out on the next loop turn; nothing waits for company. Each caller keeps its own timeout:
    the shared call is cancelled only when all of its callers have given up on it.
    """

    def __init__(self, call: Callable[[list[str]], Awaitable[ModelAnswer]], max_inputs: int) -> None:
        self._call = call
        self._max_inputs = max_inputs
        self._texts: list[str] = []
        self._waiting: list[tuple[int, asyncio.Future[ModelAnswer]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def submit(self, texts: list[str]) -> asyncio.Future[ModelAnswer]:
        """A future for this request's answer; cancelling it gives up on it."""
        if self._texts and len(self._texts) + len(texts) > self._max_inputs:
            self._send()
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._send)  # after the requests already ready in this loop turn
        future: asyncio.Future[ModelAnswer] = loop.create_future()
        self._texts.extend(texts)
        self._waiting.append((len(texts), future))
        return future

    def _send(self) -> None:
        if not self._waiting:
            return
        texts, waiting = self._texts, self._waiting
        self._texts, self._waiting = [], []
        task = asyncio.get_running_loop().create_task(self._deliver(texts, waiting))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        futures = [future for _, future in waiting]
        for future in futures:  # everyone gone: stop the model working on an answer nobody will read
            future.add_done_callback(lambda _: all(f.cancelled() for f in futures) and task.cancel())

    async def _deliver(self, texts: list[str], waiting: list[tuple[int, asyncio.Future[ModelAnswer]]]) -> None:
        try:
            answer = await self._call(texts)
        except BaseException as exc:  # each caller fails (and fails over) on its own
            for _, future in waiting:
                _settle(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        parts = [answer] if len(waiting) == 1 else split_answer(answer, [size for size, _ in waiting])
        for (_, future), part in zip(waiting, parts, strict=True):
            if not future.done():
                future.set_result(part)


def _settle(future: asyncio.Future[ModelAnswer], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
