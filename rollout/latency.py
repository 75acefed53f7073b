"""Latency as the controller keeps it: sparse log-bucketed histograms, mergeable by addition.

Routers may pre-aggregate with `histogram_of`; the controller adds histograms up
(`merge_histograms`) and the latency gates read quantile bounds off their buckets
(`stats.quantile_cs`). Bucket edges are fixed, so any two histograms merge exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from rollout.stats import Bucket

HISTOGRAM_MIN_S = 1e-4
"""Lower edge of the first finite latency bucket (0.1 ms); faster samples share bucket 0."""
HISTOGRAM_GROWTH = 1.04
"""Each bucket is 4 % wider than the one below: p99 is known to within 4 %."""
HISTOGRAM_TOP_INDEX = 353
"""Index of the last finite bucket (upper edge ~100 s); slower samples go to the overflow bucket."""


def bucket_index(latency_s: float) -> int:
    """The histogram bucket that holds `latency_s` (half-open: lower <= x < upper)."""
    if latency_s < HISTOGRAM_MIN_S:
        return 0
    index = min(
        HISTOGRAM_TOP_INDEX + 1,
        math.floor(math.log(latency_s / HISTOGRAM_MIN_S) / math.log(HISTOGRAM_GROWTH)) + 1,
    )
    while index > 0 and latency_s < bucket_edges(index)[0]:  # floating-point fix-ups at edges
        index -= 1
    while index <= HISTOGRAM_TOP_INDEX and latency_s >= bucket_edges(index)[1]:
        index += 1
    return index


def bucket_edges(index: int) -> tuple[float, float]:
    """(lower, upper) edges of bucket `index`; bucket 0 starts at 0, the overflow ends at inf."""
    lower = 0.0 if index == 0 else HISTOGRAM_MIN_S * HISTOGRAM_GROWTH ** (index - 1)
    upper = math.inf if index > HISTOGRAM_TOP_INDEX else HISTOGRAM_MIN_S * HISTOGRAM_GROWTH**index
    return lower, upper


class LatencyHistogram(BaseModel):
    """Sparse latency counts by bucket index: bounded in size (~355 keys).

    Exact enough for quantile bounds: `stats.quantile_cs` rounds outward to bucket edges, so
    bucketing widens the interval by at most one bucket (4 %) and never invalidates it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    counts: dict[int, int] = Field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def buckets(self) -> list[Bucket]:
        """Sorted (lower, upper, count) triples, the form `stats.quantile_cs` reads."""
        return [(*bucket_edges(index), self.counts[index]) for index in sorted(self.counts)]


def histogram_of(latencies: Iterable[float]) -> LatencyHistogram:
    """A histogram of raw latencies."""
    counts: dict[int, int] = {}
    for latency in latencies:
        index = bucket_index(latency)
        counts[index] = counts.get(index, 0) + 1
    return LatencyHistogram(counts=counts)


def merge_histograms(a: LatencyHistogram, b: LatencyHistogram) -> LatencyHistogram:
    """The histogram of both samples (associative and commutative)."""
    merged = dict(a.counts)
    for index, count in b.counts.items():
        merged[index] = merged.get(index, 0) + count
    return LatencyHistogram(counts=merged)
