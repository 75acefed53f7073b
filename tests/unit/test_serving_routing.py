"""Pure routing arithmetic: buckets, stickiness, monotonicity, divergence, cost."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.evidence import Variant
from serving.routing import (
    BUCKETS,
    Chooser,
    bucket_of,
    cost_dollars,
    other,
    softmax,
    split_compute,
    sticky_variant,
    threshold,
    top1_agreement,
    total_variation,
)

weights = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def test_bucket_is_stable_and_in_range() -> None:
    assert bucket_of("user-42") == bucket_of("user-42") == 598  # same everywhere: a fixed hash, not hash()
    assert all(0 <= bucket_of(f"k{i}") < BUCKETS for i in range(1000))


def test_buckets_spread_evenly() -> None:
    counts = Counter(bucket_of(f"user-{i}") * 10 // BUCKETS for i in range(20_000))
    assert all(abs(counts[d] - 2000) < 4 * math.sqrt(2000 * 0.9) for d in range(10))


def test_threshold_ends() -> None:
    assert threshold(0.0) == 0 and threshold(1.0) == BUCKETS and threshold(0.05) == 500
    assert threshold(-1.0) == 0 and threshold(2.0) == BUCKETS


@given(st.text(min_size=1, max_size=50), weights, weights)
def test_sticky_keys_only_move_teacher_to_student_as_weight_grows(key: str, a: float, b: float) -> None:
    low, high = sorted((a, b))
    if sticky_variant(key, low) is Variant.STUDENT:
        assert sticky_variant(key, high) is Variant.STUDENT


@given(weights)
def test_sticky_share_tracks_weight(weight: float) -> None:
    keys = [f"user-{i}" for i in range(2000)]
    share = sum(sticky_variant(k, weight) is Variant.STUDENT for k in keys) / len(keys)
    assert abs(share - weight) <= 4 * math.sqrt(0.25 / len(keys)) + 1 / BUCKETS


def test_chooser_weighted_coin_matches_weight() -> None:
    chooser, n = Chooser(random.Random(7)), 20_000
    share = sum(chooser.choose(0.25, None) is Variant.STUDENT for _ in range(n)) / n
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    assert chooser.choose(0.0, None) is Variant.TEACHER and chooser.choose(1.0, None) is Variant.STUDENT
    assert chooser.choose(0.5, "user-1") is sticky_variant("user-1", 0.5)


def test_chooser_samples_the_shadow_fraction() -> None:
    chooser = Chooser(random.Random(1))
    assert not any(chooser.sample(0.0) for _ in range(100)) and all(chooser.sample(1.0) for _ in range(100))
    assert 800 < sum(chooser.sample(0.1) for _ in range(10_000)) < 1200


def test_other() -> None:
    assert other(Variant.TEACHER) is Variant.STUDENT and other(Variant.STUDENT) is Variant.TEACHER


def test_total_variation_and_agreement() -> None:
    p = np.array([[0.9, 0.1], [0.5, 0.5], [1.0, 0.0]], dtype=np.float32)
    q = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]], dtype=np.float32)
    assert total_variation(p, q) == pytest.approx([0.0, 0.3, 1.0], abs=1e-6)
    assert top1_agreement(p, q).tolist() == [True, False, False]


def test_softmax_rows_sum_to_one() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0]) and probs[1].tolist() == [0.5, 0.5]


def test_cost_arithmetic() -> None:
    assert cost_dollars(3600.0, 2.0, 0.05) == pytest.approx(0.10)
    assert cost_dollars(0.010, 0.5, 0.036) == pytest.approx(0.010 * 0.5 * 0.036 / 3600)
    assert cost_dollars(1.0, 1.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        cost_dollars(-1.0, 1.0, 1.0)


def test_split_compute_shares_a_batch_by_inputs() -> None:
    assert split_compute(0.6, [1, 2, 3]) == pytest.approx([0.1, 0.2, 0.3])
    assert split_compute(1.0, []) == []
