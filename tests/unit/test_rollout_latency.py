"""rollout.latency: bucket edges, and merging histograms."""

from __future__ import annotations

import math

import pytest

from rollout.latency import (
    HISTOGRAM_MIN_S,
    HISTOGRAM_TOP_INDEX,
    bucket_edges,
    bucket_index,
    histogram_of,
    merge_histograms,
)


def test_every_latency_lands_in_the_bucket_whose_edges_hold_it() -> None:
    edges = [bucket_edges(i)[0] for i in range(1, HISTOGRAM_TOP_INDEX + 2)]
    for value in [
        0.0,
        5e-5,
        HISTOGRAM_MIN_S,
        0.0123,
        1.0,
        99.0,
        *edges,
        *(e * (1 - 1e-15) for e in edges),
    ]:
        lower, upper = bucket_edges(bucket_index(value))
        assert lower <= value < upper, value
    assert bucket_index(0.0) == 0
    assert bucket_edges(bucket_index(1e6)) == (bucket_edges(HISTOGRAM_TOP_INDEX + 1)[0], math.inf)


def test_buckets_are_4_percent_wide() -> None:
    lower, upper = bucket_edges(bucket_index(0.05))
    assert upper / lower == pytest.approx(1.04)


def test_merging_two_histograms_is_the_histogram_of_both_samples() -> None:
    first, second = [0.001, 0.002, 0.5], [0.002, 0.003, 120.0]
    merged = merge_histograms(histogram_of(first), histogram_of(second))
    assert merged == histogram_of(first + second) == merge_histograms(histogram_of(second), histogram_of(first))
    assert merged.total == 6
