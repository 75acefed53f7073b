"""RolloutDeployment: the rollout controller as a Ray Serve deployment (exactly one replica).

A thin shell over `rollout.controller.RolloutController`, which holds every rule: this class
builds it over a SQLite store and an HTTP webhook sender, ticks it from a background loop
(sleeping until `next_tick_at()`), and mirrors its status into Prometheus gauges after every
tick. Routers ask `routing_change(known, wait_s)`, which answers once the routing differs from
the one they know (serving/long_poll.py), and push `record(...)`; the admin API calls the intents.

Feedback: request ids are receipts signed with the key in `<state_dir>/receipts.key` (made
once; routers fetch it with `receipt_key()`), and `feedback(items)` hands labels to the pair's
controller, whose desk knows the teacher's label names (asked when the pair is opened).

A rollout judges one model pair, and the models say which: every second the loop asks every
teacher and student replica (`DeploymentHandle.broadcast("model_id")`). Once all replicas of
both serve one bundle each and that pair is new, the controller for it is built over
`<state_dir>/<teacher id>-<student id>.sqlite` (resuming what that file holds). So `serve
deploy` with a new student bundle (the model deployment's `user_config`) begins a fresh rollout
for the new pair, from the shadow stage, started on its own when the old one had been started;
routers drop the old pair's pending observations and never serve an answer from a student that
the routing does not name.

The spec arrives as the deployment's `user_config` (a mapping, validated by `RolloutSpec`),
so a changed spec reaches the live replica through `reconfigure`, and the controller adopts it
in place (same stage, weight, evidence; a `spec_changed` event). When Ray restarts a killed
replica, the new controller claims the store (any old one still running is fenced: it no
longer writes) and resumes from it: same stage, weight and evidence. Routers keep their last
weight meanwhile.

Serve runs sync methods in its thread pool; the controller locks internally, so they are
called directly. The tick loop calls `tick` in a worker thread to keep the loop free.

With the spec's `disagreements` log on when the pair opens, it is written beside the store
(`<pair>.disagreements.jsonl`, rotated); `disagreements(after, limit)` pages it for export.

Before stage 0 the loop runs the spec's smoke test (rollout/smoke.py) as a task of its own: the
served teacher and student answer their bundles' recorded inputs (or the labelled file the spec
names, beside each bundle as registered) through their handles, and the verdict goes to the
controller, which starts stage 0 or rolls back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from ray import serve
from ray.serve.handle import DeploymentHandle

from rollout.clock import SystemClock
from rollout.controller import RolloutController
from rollout.disagreements import DisagreementFile
from rollout.errors import SpecError
from rollout.evidence import Observation, Variant
from rollout.feedback import FeedbackDesk, FeedbackItem, FeedbackResult
from rollout.receipts import ReceiptSigner, load_or_create_key
from rollout.smoke import SmokeResult, judge_smoke, skipped
from rollout.spec import RolloutSpec, SmokeTest
from rollout.store import SqliteStateStore
from rollout.views import ModelPair, PublishedRouting
from rollout.webhooks import HttpWebhookSender
from serving import long_poll
from serving.errors import PairUnknownError
from serving.smoke_inputs import read_labelled_inputs

log = logging.getLogger("ray.serve")
VARIANTS = (Variant.TEACHER, Variant.STUDENT)
SMOKE_BATCH = 32  # inputs per model call of the smoke test
SMOKE_ATTEMPTS = 3  # smoke tests in a row whose calls failed before it counts as failed
SMOKE_CALL_TIMEOUT_S = 120.0  # a model call of the smoke test (a named file is answered whole)


class ControllerConfig(BaseModel):
    """Where rollouts keep state and whom to notify (the spec comes as user_config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(description="one SQLite file per model pair: status, evidence and the event log")
    webhooks: tuple[HttpUrl, ...] = ()
    webhook_timeout_s: float = Field(default=2.0, gt=0.0)
    webhook_retries: int = Field(default=3, ge=0)
    pair_check_interval_s: float = Field(default=1.0, gt=0.0, description="how often to ask the models")
    ready_timeout_s: float = Field(default=30.0, gt=0.0, description="how long an admin call waits for a pair")

    def state_path(self, pair: ModelPair) -> Path:
        return self.state_dir / f"{pair.teacher_id}-{pair.student_id}.sqlite"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "receipts.key"


@serve.deployment(
    name="controller",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.1},
    logging_config={"enable_access_log": False},  # every router holds a routing request open
    health_check_period_s=2.0,
    max_ongoing_requests=256,  # one held routing request per router replica, and room beside them
)
class RolloutDeployment:
    def __init__(
        self, config: ControllerConfig, teacher: DeploymentHandle[Any], student: DeploymentHandle[Any]
    ) -> None:
        from serving.metrics import ControllerMetrics  # Ray metrics bind to the replica process

        self._config = config
        self._key = load_or_create_key(config.key_path)
        self._models = {Variant.TEACHER: teacher, Variant.STUDENT: student}
        self._spec = RolloutSpec()  # until the first user_config
        self._controller: RolloutController | None = None  # built once the models name their pair
        self._ready = threading.Event()
        self._lock = threading.Lock()  # reconfigure (Serve's thread) vs a pair switch (a worker thread)
        self._webhooks = HttpWebhookSender(
            [str(url) for url in config.webhooks], timeout_s=config.webhook_timeout_s, retries=config.webhook_retries
        )
        self._metrics = ControllerMetrics()
        self._smoking: asyncio.Task[None] | None = None  # the smoke test in flight, if any
        self._smoke_failures = 0  # smoke test attempts in a row whose model calls failed
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Adopt a (new) spec; a live controller changes it in place (SpecError names a bad field)."""
        spec = RolloutSpec.from_mapping(user_config)
        with self._lock:
            if self._controller is not None:
                self._controller.adopt_spec(spec)
                log.info("rollout spec changed in place: %d stages", len(spec.stages))
            self._spec = spec

    @property
    def controller(self) -> RolloutController:
        """The current pair's controller, waiting a while for the first pair after a start."""
        if not self._ready.wait(self._config.ready_timeout_s):
            raise PairUnknownError("no rollout yet: the teacher and student replicas have not said what they serve")
        assert self._controller is not None
        return self._controller

    # --- the background loop: follow the models, tick ---------------------------------------

    async def _tick_forever(self) -> None:
        asked_at = -math.inf
        while True:
            if time.monotonic() - asked_at >= self._config.pair_check_interval_s:
                asked_at = time.monotonic()
                await self._follow_models()
            controller = self._controller
            if controller is None:
                await asyncio.sleep(0.1)
                continue
            await asyncio.sleep(min(1.0, max(0.0, controller.next_tick_at() - time.time())))
            try:
                await asyncio.to_thread(controller.tick)
                self._metrics.show(controller.snapshot())
            except Exception:  # a bad tick must not end the loop; the next one retries
                log.exception("rollout tick failed")
            if self._smoking is None and controller.smoke_due():
                self._smoking = asyncio.get_running_loop().create_task(self._smoke_test(controller))

    async def _smoke_test(self, controller: RolloutController) -> None:
        """The spec's smoke test (rollout/smoke.py): the served models answer their bundles'
        recorded inputs through Serve, as traffic reaches them; the verdict goes to `controller`.
        A call that fails is tried again on the next loop; SMOKE_ATTEMPTS failures in a row fail
        the smoke test, naming the error (a model that cannot answer never reaches stage 0)."""
        try:
            result = await self._smoke_result(controller)
            self._smoke_failures = 0
        except Exception as exc:
            self._smoke_failures += 1
            log.warning("smoke test call failed (%d of %d): %r", self._smoke_failures, SMOKE_ATTEMPTS, exc)
            if self._smoke_failures < SMOKE_ATTEMPTS:
                self._smoking = None
                return
            self._smoke_failures = 0
            result = SmokeResult(passed=False, message=f"smoke test failed: the served models did not answer: {exc!r}")
        log.info("%s", result.message)
        try:
            await asyncio.to_thread(controller.record_smoke, result)
        finally:
            self._smoking = None

    async def _smoke_result(self, controller: RolloutController) -> SmokeResult:
        smoke = self._spec.smoke or SmokeTest()
        if smoke.inputs is None:  # each bundle's validation answers, recorded at registration
            asked = [self._models[v].options(method_name="recorded_answers").remote() for v in VARIANTS]
        else:  # the spec's labelled file, answered by each bundle as registered
            try:
                texts, labels = await asyncio.to_thread(read_labelled_inputs, smoke.inputs, await self._label_names())
            except SpecError as exc:  # the file changed since the application was built
                return SmokeResult(passed=False, message=f"smoke test failed: {exc}")
            asked = [self._models[v].options(method_name="registered_answers").remote(texts, labels) for v in VARIANTS]
        async with asyncio.timeout(SMOKE_CALL_TIMEOUT_S * len(asked)):
            teacher, student = [await answer for answer in asked]
        if teacher is None or student is None:
            pair = controller.pair
            return skipped(str(pair.teacher_id if teacher is None else pair.student_id) if pair else "?")
        tolerance = smoke.tolerance
        teacher_top1 = await self._top1(Variant.TEACHER, teacher.texts)
        student_top1 = await self._top1(Variant.STUDENT, student.texts)
        return judge_smoke(tolerance, teacher, student, teacher_top1, student_top1)

    async def _top1(self, variant: Variant, texts: Sequence[str]) -> list[int]:
        handle = self._models[variant].options(method_name="predict")
        labels: list[int] = []
        for start in range(0, len(texts), SMOKE_BATCH):
            batch = list(texts[start : start + SMOKE_BATCH])
            async with asyncio.timeout(SMOKE_CALL_TIMEOUT_S):
                answer = await handle.remote(batch)
            labels += answer.probabilities.argmax(axis=1).tolist()
        return labels

    async def _follow_models(self) -> None:
        try:
            teacher, student = await asyncio.gather(self._served(Variant.TEACHER), self._served(Variant.STUDENT))
        except Exception as exc:  # models unreachable for now: keep the current pair
            log.debug("could not ask the models what they serve (%s)", type(exc).__name__)
            return
        if teacher is None or student is None:  # no replica yet, or a swap under way
            return
        pair = ModelPair(teacher_id=teacher, student_id=student)
        if self._controller is None or self._controller.pair != pair:
            try:
                labels = await self._label_names()
                await asyncio.to_thread(self._switch, pair, labels)
            except Exception:
                log.exception("could not open the rollout for %s", pair)

    async def _served(self, variant: Variant) -> str | None:
        """The bundle id every replica of `variant` serves; None while they differ or none answers."""
        response = self._models[variant].broadcast("model_id")
        async with asyncio.timeout(10.0):
            answers = await response.results_async(return_exceptions=True)
        ids = {answer for answer in answers if isinstance(answer, str)}
        complete = len(ids) == 1 and all(isinstance(answer, str) for answer in answers)
        return ids.pop() if complete else None

    async def _label_names(self) -> tuple[str, ...]:
        handle = self._models[Variant.TEACHER].options(method_name="label_names")
        async with asyncio.timeout(10.0):
            labels: tuple[str, ...] | None = await handle.remote()
        if not labels:
            raise RuntimeError("the teacher answered no label names")
        return labels

    def _switch(self, pair: ModelPair, labels: tuple[str, ...]) -> None:
        """Judge `pair` from now on: its own store (resumed if it has state); a fresh rollout is
        started when the pair it replaces had been started."""
        path = self._config.state_path(pair)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            before = self._controller
            store = SqliteStateStore(path)
            desk = FeedbackDesk(ReceiptSigner(self._key), pair, labels, store)
            kept = self._spec.disagreements
            disagreements = None if kept is None else DisagreementFile(
                path.with_suffix(".disagreements.jsonl"), kept.max_file_bytes, kept.keep_files
            )  # fmt: skip
            controller = RolloutController(
                self._spec, store, SystemClock(), self._webhooks, pair=pair, desk=desk, smoke_test=True,
                disagreements=disagreements,
            )  # fmt: skip
            if before is not None and before.status() is not None and controller.status() is None:
                reason = f"{before.pair} replaced in place by {pair}: a fresh rollout from the shadow stage"
                controller.start(actor="kdcanary", reason=reason)
            self._controller = controller
            self._metrics.new_rollout()
        self._ready.set()
        view = controller.snapshot()
        self._metrics.show(view)
        log.info(
            "rollout controller for %s: state %s (journal %s, writer term %s), %d stages",
            pair, path, store.journal_mode, view.store.term, view.stage_count,
        )  # fmt: skip

    def check_health(self) -> None:
        if self._ticker.done():
            raise RuntimeError(f"rollout tick loop ended: {self._ticker.exception()!r}")

    # --- routers ----------------------------------------------------------------------------

    async def routing_change(self, known: PublishedRouting | None, wait_s: float) -> PublishedRouting:
        """The routing once it differs from `known`, or after `wait_s` unchanged (a held request)."""
        return await long_poll.changed(self.routing, known, wait_s)

    def routing(self) -> PublishedRouting:
        controller = self._controller
        if controller is None:  # no pair yet: the teacher answers everything
            return PublishedRouting(weight=0.0, shadow_fraction=0.0, version=0)
        return controller.routing()

    def record(self, observations: Sequence[Observation]) -> None:
        controller = self._controller
        if controller is None or controller.pair is None:
            return
        ours = [o for o in observations if o.model_id in (None, _id_of(controller.pair, o.variant))]
        before = controller.routing().version
        controller.record(ours)  # ticks inside when the trip wire fires
        if controller.routing().version != before:
            self._metrics.show(controller.snapshot())

    def receipt_key(self) -> str:
        """The key routers sign request ids with (hex), shared by every replica and restart."""
        return self._key.hex()

    def feedback(self, items: Sequence[FeedbackItem]) -> FeedbackResult:
        result = self.controller.feedback(items)
        self._metrics.show(self.controller.snapshot())
        return result

    # --- admin (each returns the status after the intent) -------------------------------

    def snapshot(self) -> dict[str, Any]:
        return self.controller.snapshot().model_dump(mode="json")

    def disagreements(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return [entry.model_dump(mode="json") for entry in self.controller.disagreements(after, limit)]

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

    def confirm(self, *, actor: str, reason: str) -> dict[str, Any]:
        self.controller.confirm(actor=actor, reason=reason)
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


def _id_of(pair: ModelPair, variant: Variant) -> str:
    return pair.teacher_id if variant is Variant.TEACHER else pair.student_id
