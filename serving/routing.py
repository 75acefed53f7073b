"""Pure routing arithmetic: no Ray, no clock, randomness injected.

Sticky routing hashes a key into BUCKETS fixed buckets; bucket b goes to the student when
b < threshold(weight). The threshold never decreases as the weight grows, so a key only ever
moves teacher -> student on the way up (and student -> teacher on a rollback).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import numpy as np

from rollout.disagreements import Disagreement
from rollout.evidence import Observation, Variant
from serving.answer import ModelAnswer

BUCKETS = 10_000


def bucket_of(key: str) -> int:
    """A stable bucket in [0, BUCKETS) for a routing key (same key, same bucket, every process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def threshold(weight: float) -> int:
    """Buckets [0, threshold) go to the student; monotone non-decreasing in weight."""
    clipped = min(1.0, max(0.0, weight))
    return round(clipped * BUCKETS)


def sticky_variant(key: str, weight: float) -> Variant:
    return Variant.STUDENT if bucket_of(key) < threshold(weight) else Variant.TEACHER


class Chooser:
    """Picks the variant for one request: sticky by key when given, else a weighted coin."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, weight: float, key: str | None) -> Variant:
        if key is not None:
            return sticky_variant(key, weight)
        if weight <= 0.0:
            return Variant.TEACHER
        if weight >= 1.0:
            return Variant.STUDENT
        return Variant.STUDENT if self._rng.random() < weight else Variant.TEACHER

    def sample(self, fraction: float) -> bool:
        """True for a `fraction` of calls: whether to shadow this request."""
        return fraction > 0.0 and (fraction >= 1.0 or self._rng.random() < fraction)


def other(variant: Variant) -> Variant:
    return Variant.TEACHER if variant is Variant.STUDENT else Variant.STUDENT


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance per row between two [n, labels] probability arrays, in [0, 1]."""
    return np.asarray(0.5 * np.abs(p.astype(np.float64) - q.astype(np.float64)).sum(axis=-1))


def top1_agreement(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per row, whether both arrays put their largest probability on the same label."""
    return np.asarray(np.argmax(p, axis=-1) == np.argmax(q, axis=-1))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


def cost_dollars(compute_s: float, cpus: float, price_per_cpu_hour: float) -> float:
    """Dollars for `compute_s` seconds on a replica holding `cpus` CPUs at a per-CPU-hour price."""
    if compute_s < 0 or cpus < 0 or price_per_cpu_hour < 0:
        raise ValueError(f"cost needs non-negative inputs, got {compute_s=}, {cpus=}, {price_per_cpu_hour=}")
    return compute_s * cpus * price_per_cpu_hour / 3600.0


def split_compute(total_s: float, sizes: Sequence[int]) -> list[float]:
    """A batch's compute seconds shared between its requests in proportion to their inputs."""
    count = sum(sizes)
    return [total_s * size / count if count else 0.0 for size in sizes]


def disagreements_of(
    nonce: str,
    at: float,
    texts: Sequence[str],
    segment: str | None,
    teacher: ModelAnswer,
    student: ModelAnswer,
    logged: np.ndarray,
) -> tuple[Disagreement, ...]:
    """The `logged` inputs of one shadowed request (those the two models answered differently,
    and the agreeing ones when the spec samples those too), for the spec's disagreement log
    (ids: the request's nonce and the input's index)."""
    return tuple(
        Disagreement(
            id=f"{nonce}:{i}",
            at=at,
            text=texts[i],
            teacher_label=teacher.label_names[int(teacher.probabilities[i].argmax())],
            student_label=student.label_names[int(student.probabilities[i].argmax())],
            teacher_probabilities=tuple(round(float(p), 6) for p in teacher.probabilities[i]),
            student_probabilities=tuple(round(float(p), 6) for p in student.probabilities[i]),
            segment=segment,
        )
        for i in np.flatnonzero(logged).tolist()
    )


def bound_disagreements(batch: list[Observation], limit: int) -> list[Observation]:
    """`batch` with at most `limit` disagreement entries (the first ones), the rest stripped."""
    if sum(len(o.disagreements) for o in batch) <= limit:
        return batch
    kept, bounded = 0, []
    for observation in batch:
        if observation.disagreements:
            room = max(0, limit - kept)
            observation = observation.model_copy(update={"disagreements": observation.disagreements[:room]})
            kept += len(observation.disagreements)
        bounded.append(observation)
    return bounded
