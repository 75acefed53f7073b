"""ModelDeployment: one Ray Serve deployment class that serves any registry bundle by id.

Teacher and student are two deployments of this class (`.options(name=...)`), each with its
own replicas, CPUs and autoscaling. A replica verifies the bundle's files against its manifest
(refusing it otherwise), loads ONNX Runtime with intra-op threads = its CPUs rounded up, warms
up, and answers batched `predict` calls. `check_health` runs a real inference.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from rollout.evidence import Variant
from serving.classifier import Classifier, load_bundle, threads_for
from serving.config import ModelConfig
from serving.errors import ModelCallError
from serving.metrics import ModelMetrics
from serving.routing import cost_dollars, split_compute
from serving.schemas import PredictRequest, first_error

WARMUP_TEXTS = ["warm-up", "a somewhat longer sentence to warm up the kernels for wider inputs"]


@dataclass(frozen=True)
class ModelAnswer:
    """One request's answer from one model (what travels from model replica to router)."""

    model_id: str
    variant: Variant
    label_names: tuple[str, ...]
    probabilities: np.ndarray  # float32 [inputs, labels]
    compute_s: float
    cost_dollars: float


@serve.deployment(name="model", health_check_period_s=10.0, health_check_timeout_s=30.0)
class ModelDeployment:
    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        bundle = load_bundle(config.registry, config.bundle)
        self._classifier = Classifier(bundle, threads_for(config.cpus))
        self._model_id = bundle.id
        self._rng = random.Random()
        self._metrics = ModelMetrics(config.variant)
        batcher: Any = self._score_batch  # serve.batch adds setters the type stubs do not show
        batcher.set_max_batch_size(config.batching.max_batch_size)
        batcher.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)
        for _ in range(3):
            self._classifier.score(WARMUP_TEXTS)

    async def predict(self, texts: list[str]) -> ModelAnswer:
        if self._config.chaos_error_rate and self._rng.random() < self._config.chaos_error_rate:
            raise ModelCallError(f"{self._config.variant} {self._model_id}: injected fault (chaos_error_rate)")
        answer: ModelAnswer = await self._score_batch(texts)
        return answer

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _score_batch(self, requests: list[list[str]]) -> list[ModelAnswer]:
        flat = [text for texts in requests for text in texts]
        scored = self._classifier.score(flat)
        dollars = cost_dollars(scored.compute_s, self._config.cpus, self._config.price_per_cpu_hour)
        self._metrics.record_batch(len(flat), scored.compute_s, dollars)
        sizes = [len(texts) for texts in requests]
        shares = split_compute(scored.compute_s, sizes)
        answers, start = [], 0
        for size, share in zip(sizes, shares, strict=True):
            answers.append(
                ModelAnswer(
                    model_id=self._model_id,
                    variant=self._config.variant,
                    label_names=self._classifier.label_names,
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

    def check_health(self) -> None:
        """A real inference; raising marks the replica unhealthy and Serve replaces it."""
        probabilities = self._classifier.score(["health check"]).probabilities
        if probabilities.shape != (1, len(self._classifier.label_names)) or not np.isfinite(probabilities).all():
            raise ModelCallError(f"{self._model_id}: health check got unusable output {probabilities!r}")


def prediction_payload(answer: ModelAnswer) -> list[dict[str, Any]]:
    """The `predictions` list of the HTTP answer (probabilities rounded to 6 decimals)."""
    rows = answer.probabilities.astype(np.float64).round(6).tolist()
    label_ids = answer.probabilities.argmax(axis=1).tolist()
    return [
        {"label": answer.label_names[i], "label_id": i, "probabilities": row}
        for i, row in zip(label_ids, rows, strict=True)
    ]
