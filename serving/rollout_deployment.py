"""RolloutDeployment: the rollout controller as a Ray Serve deployment (exactly one replica).

A thin shell over `rollout.controller.RolloutController`, which holds every rule: this class
builds it over a SQLite store and an HTTP webhook sender, ticks it from a background loop
(sleeping until `next_tick_at()`), and mirrors its status into Prometheus gauges after every
tick. Routers poll `routing()` and push `record(...)`; the admin API calls the intents.

The spec arrives as the deployment's `user_config` (a mapping, validated by `RolloutSpec`),
so a changed spec reaches the live replica through `reconfigure`, and the controller adopts it
in place (same stage, weight, evidence; a `spec_changed` event). When Ray restarts a killed
replica, the new controller claims the store (any old one still running is fenced: it no
longer writes) and resumes from it: same stage, weight and evidence. Routers keep their last
weight meanwhile.

Serve runs sync methods in its thread pool; the controller locks internally, so they are
called directly. The tick loop calls `tick` in a worker thread to keep the loop free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from ray import serve

from rollout.clock import SystemClock
from rollout.controller import RolloutController
from rollout.evidence import Observation
from rollout.spec import RolloutSpec
from rollout.store import SqliteStateStore
from rollout.views import PublishedRouting
from rollout.webhooks import HttpWebhookSender

log = logging.getLogger("ray.serve")


class ControllerConfig(BaseModel):
    """Where the rollout's state lives and whom to notify (the spec comes as user_config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_path: Path = Field(description="SQLite file: status, evidence and the event log")
    webhooks: tuple[HttpUrl, ...] = ()
    webhook_timeout_s: float = Field(default=2.0, gt=0.0)
    webhook_retries: int = Field(default=3, ge=0)


@serve.deployment(
    name="controller",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.1},
    logging_config={"enable_access_log": False},  # routers poll it several times a second
    health_check_period_s=2.0,
)
class RolloutDeployment:
    def __init__(self, config: ControllerConfig) -> None:
        from serving.metrics import ControllerMetrics  # Ray metrics bind to the replica process

        self._config = config
        self._controller: RolloutController | None = None
        self._webhooks = HttpWebhookSender(
            [str(url) for url in config.webhooks], timeout_s=config.webhook_timeout_s, retries=config.webhook_retries
        )
        self._metrics = ControllerMetrics()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Adopt a (new) spec: the first builds the controller over the store (claiming it and
        resuming what it holds); a later one changes the live controller's spec in place."""
        spec = RolloutSpec.from_mapping(user_config)  # SpecError names the bad field
        if self._controller is not None:
            self._controller.adopt_spec(spec)
            log.info("rollout spec changed in place: %d stages", len(spec.stages))
            return
        self._config.state_path.parent.mkdir(parents=True, exist_ok=True)
        store = SqliteStateStore(self._config.state_path)
        self._controller = RolloutController(spec, store, SystemClock(), self._webhooks)
        log.info(
            "rollout controller ready: state %s (journal %s, writer term %s), %d stages",
            self._config.state_path, store.journal_mode, self._controller.snapshot().store.term, len(spec.stages),
        )  # fmt: skip

    @property
    def controller(self) -> RolloutController:
        if self._controller is None:  # Serve calls reconfigure before any request
            self.reconfigure(None)
        assert self._controller is not None
        return self._controller

    async def _tick_forever(self) -> None:
        while True:
            controller = self._controller
            if controller is None:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(min(1.0, max(0.0, controller.next_tick_at() - time.time())))
            try:
                await asyncio.to_thread(controller.tick)
                self._metrics.show(controller.snapshot())
            except Exception:  # a bad tick must not end the loop; the next one retries
                log.exception("rollout tick failed")

    def check_health(self) -> None:
        if self._ticker.done():
            raise RuntimeError(f"rollout tick loop ended: {self._ticker.exception()!r}")

    # --- routers ----------------------------------------------------------------------------

    def routing(self) -> PublishedRouting:
        return self.controller.routing()

    def record(self, observations: Sequence[Observation]) -> None:
        before = self.controller.routing().version
        self.controller.record(observations)  # ticks inside when the trip wire fires
        if self.controller.routing().version != before:
            self._metrics.show(self.controller.snapshot())

    # --- admin (each returns the status after the intent) -------------------------------

    def snapshot(self) -> dict[str, Any]:
        return self.controller.snapshot().model_dump(mode="json")

    def events(self, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return [event.model_dump(mode="json") for event in self.controller.events(after_id, limit)]

    def start(self, *, actor: str, reason: str) -> dict[str, Any]:
        self.controller.start(actor=actor, reason=reason)
        return self._shown()

    def pause(self, *, actor: str, reason: str) -> dict[str, Any]:
        self.controller.pause(actor=actor, reason=reason)
        return self._shown()

    def resume(self, *, actor: str, reason: str) -> dict[str, Any]:
        self.controller.resume(actor=actor, reason=reason)
        return self._shown()

    def promote(self, to_full: bool = False, *, actor: str, reason: str) -> dict[str, Any]:
        self.controller.promote(to_full, actor=actor, reason=reason)
        return self._shown()

    def rollback(self, reason: str, *, actor: str) -> dict[str, Any]:
        self.controller.rollback(reason, actor=actor)
        return self._shown()

    def set_weight(self, weight: float | None, *, actor: str, reason: str) -> dict[str, Any]:
        self.controller.set_weight(weight, actor=actor, reason=reason)
        return self._shown()

    def _shown(self) -> dict[str, Any]:
        view = self.controller.snapshot()
        self._metrics.show(view)
        return view.model_dump(mode="json")
