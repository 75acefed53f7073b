"""What a model call returns, and how the router turns it into the HTTP answer or splits it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rollout.evidence import Variant


@dataclass(frozen=True)
class ModelAnswer:
    """One request's answer from one model (what travels from model replica to router)."""

    model_id: str
    variant: Variant
    label_names: tuple[str, ...]
    probabilities: np.ndarray  # float32 [inputs, labels]
    compute_s: float
    cost_dollars: float


def prediction_payload(answer: ModelAnswer) -> list[dict[str, Any]]:
    """The `predictions` list of the HTTP answer (probabilities rounded to 6 decimals)."""
    rows = answer.probabilities.astype(np.float64).round(6).tolist()
    label_ids = answer.probabilities.argmax(axis=1).tolist()
    return [
        {"label": answer.label_names[i], "label_id": i, "probabilities": row}
        for i, row in zip(label_ids, rows, strict=True)
    ]


def split_answer(answer: ModelAnswer, sizes: list[int]) -> list[ModelAnswer]:
    """One answer to several requests' inputs, cut back into one answer per request (compute
    and cost shared in proportion to inputs)."""
    total, start, parts = sum(sizes), 0, []
    for size in sizes:
        share = size / total
        rows = answer.probabilities[start : start + size]
        parts.append(
            replace(
                answer, probabilities=rows, compute_s=answer.compute_s * share, cost_dollars=answer.cost_dollars * share
            )
        )
        start += size
    return parts
