"""What the router core records, as a Protocol (DESIGN §4.6), and its in-memory fake.

`serving.metrics.RouterMetrics` is the Ray-backed sink a router replica passes in;
`RecordingMetrics` counts in memory for unit tests and the simulation (bench/simulation.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from rollout.evidence import Variant


class RouterMetricsSink(Protocol):
    """What the core records; `serving.metrics.RouterMetrics` is the Ray-backed one."""

    def record_request(self, variant: Variant, outcome: str, latency_s: float) -> None: ...

    def record_failover(self, reason: str) -> None: ...

    def record_comparison(self, agreed: int, divergences: list[float]) -> None: ...

    def record_shadow_dropped(self, reason: str) -> None: ...

    def record_forced(self, variant: Variant) -> None: ...

    def set_weight(self, weight: float) -> None: ...


@dataclass
class RecordingMetrics:
    """An in-memory `RouterMetricsSink` for tests and simulations: counts what was recorded."""

    requests: Counter[tuple[Variant, str]] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    failovers: Counter[str] = field(default_factory=Counter)
    shadow_dropped: Counter[str] = field(default_factory=Counter)
    forced: Counter[Variant] = field(default_factory=Counter)
    comparisons: int = 0
    agreements: int = 0
    divergences: list[float] = field(default_factory=list)
    weight: float | None = None

    def record_request(self, variant: Variant, outcome: str, latency_s: float) -> None:
        self.requests[(variant, outcome)] += 1
        self.latencies_s.append(latency_s)

    def record_failover(self, reason: str) -> None:
        self.failovers[reason] += 1

    def record_comparison(self, agreed: int, divergences: list[float]) -> None:
        self.comparisons += len(divergences)
        self.agreements += agreed
        self.divergences.extend(divergences)

    def record_shadow_dropped(self, reason: str) -> None:
        self.shadow_dropped[reason] += 1

    def record_forced(self, variant: Variant) -> None:
        self.forced[variant] += 1

    def set_weight(self, weight: float) -> None:
        self.weight = weight
