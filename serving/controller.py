"""The controller interface routers talk to, and the minimal controller that holds a weight.

`RoutingSource` is the contract between routers and whichever controller runs: routers poll
`routing()` (adopting only a newer `version`) and push `record(observations)` in batches,
fire-and-forget; the admin API calls the intents, `snapshot()` and `events()`. Two deployments
implement it: `serving.rollout_deployment.RolloutDeployment` (the rollout controller, the
default) and `WeightController` here, the minimal one: the weight is whatever an operator
last set, observations are only counted, and there is no rollout to start, pause or promote
(those intents are refused with a 409 that says so; rollback sets the weight to 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict
from ray import serve

from rollout.errors import IntentError
from rollout.evidence import Observation, Variant
from rollout.views import PublishedRouting


class RoutingSource(Protocol):
    """What a controller deployment answers (admin methods return JSON-ready dicts)."""

    def routing(self) -> PublishedRouting: ...

    def record(self, observations: Sequence[Observation]) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def events(self, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]: ...

    def start(self, *, actor: str, reason: str) -> dict[str, Any]: ...

    def pause(self, *, actor: str, reason: str) -> dict[str, Any]: ...

    def resume(self, *, actor: str, reason: str) -> dict[str, Any]: ...

    def promote(self, to_full: bool = False, *, actor: str, reason: str) -> dict[str, Any]: ...

    def rollback(self, reason: str, *, actor: str) -> dict[str, Any]: ...

    def set_weight(self, weight_percent: float | None, *, actor: str, reason: str) -> dict[str, Any]: ...


class Tally(BaseModel):
    """Counts of what routers reported, per variant."""

    model_config = ConfigDict(extra="forbid")

    observations: int = 0
    errors: int = 0
    compared: int = 0
    agreed: int = 0
    cost: float = 0.0


class WeightView(BaseModel):
    """`GET /admin/rollout` for the minimal controller."""

    model_config = ConfigDict(extra="forbid")

    controller: str = "manual"
    weight: float
    weight_percent: float
    shadow_fraction: float
    version: int
    actor: str | None
    reason: str | None
    updated_at: float
    tallies: dict[str, Tally]


class ManualWeights:
    """Holds the weight an operator set; counts observations (no decisions). Clock injected."""

    def __init__(self, weight: float, shadow_fraction: float, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._routing = PublishedRouting(weight_percent=weight * 100.0, shadow_fraction=shadow_fraction, version=1)
        self._actor: str | None = None
        self._reason: str | None = None
        self._updated_at = clock()
        self._tallies = {variant.value: Tally() for variant in Variant}

    def routing(self) -> PublishedRouting:
        return self._routing

    def record(self, observations: Sequence[Observation]) -> None:
        for obs in observations:
            tally = self._tallies[obs.variant.value]
            tally.observations += 1
            tally.errors += obs.error
            tally.cost += obs.cost
            if obs.agreed is not None:
                tally.compared += 1
                tally.agreed += obs.agreed

    def set_weight(self, weight_percent: float | None, *, actor: str, reason: str) -> WeightView:
        if weight_percent is None or not 0.0 <= weight_percent <= 100.0:
            raise ValueError(f"weight_percent must be within [0, 100], got {weight_percent}")
        current = self._routing
        self._routing = PublishedRouting(
            weight_percent=weight_percent, shadow_fraction=current.shadow_fraction, version=current.version + 1
        )
        self._actor, self._reason, self._updated_at = actor, reason, self._clock()
        return self.snapshot()

    def snapshot(self) -> WeightView:
        r = self._routing
        return WeightView(
            weight=r.weight_percent / 100.0,
            weight_percent=r.weight_percent,
            shadow_fraction=r.shadow_fraction,
            version=r.version,
            actor=self._actor,
            reason=self._reason,
            updated_at=self._updated_at,
            tallies={k: v.model_copy() for k, v in self._tallies.items()},
        )


@serve.deployment(
    name="controller",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.1},
    logging_config={"enable_access_log": False},  # routers poll it several times a second
)
class WeightController:
    """The minimal controller as a Ray Serve deployment (exactly one replica: it holds state).

    Serve runs sync methods in a thread pool, so every call takes the lock.
    """

    def __init__(self, weight: float, shadow_fraction: float) -> None:
        self._state = ManualWeights(weight, shadow_fraction)
        self._lock = threading.Lock()

    def routing(self) -> PublishedRouting:
        with self._lock:
            return self._state.routing()

    def record(self, observations: Sequence[Observation]) -> None:
        with self._lock:
            self._state.record(observations)

    def set_weight(self, weight_percent: float | None, *, actor: str, reason: str) -> dict[str, Any]:
        with self._lock:
            return self._state.set_weight(weight_percent, actor=actor, reason=reason).model_dump(mode="json")

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._state.snapshot().model_dump(mode="json")

    def events(self, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return []  # the manual controller keeps no event log

    def rollback(self, reason: str, *, actor: str) -> dict[str, Any]:
        return self.set_weight(0.0, actor=actor, reason=reason)

    def start(self, *, actor: str, reason: str) -> dict[str, Any]:
        raise _no_rollout("start")

    def pause(self, *, actor: str, reason: str) -> dict[str, Any]:
        raise _no_rollout("pause")

    def resume(self, *, actor: str, reason: str) -> dict[str, Any]:
        raise _no_rollout("resume")

    def promote(self, to_full: bool = False, *, actor: str, reason: str) -> dict[str, Any]:
        raise _no_rollout("promote")


def _no_rollout(action: str) -> IntentError:
    return IntentError(f"cannot {action}: this app runs the manual weight controller (deploy with controller: rollout)")
