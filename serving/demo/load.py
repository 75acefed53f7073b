"""A steady-rate load generator: held-out review snippets at a fixed rate, each from a user,
and `LabelFeed`, the product's backend sending the true labels of a share of them later.

Open loop (a request leaves every 1/rate seconds whether or not the last one answered, as
live traffic does), bounded in flight so an overloaded server sheds load here instead of
piling up requests. Runs its own event loop on a thread; `window(s)` summarises the answers
of the last s seconds per variant.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import httpx
import numpy as np

from rollout.feedback import FeedbackItem
from serving.admin_client import AdminCallError, FeedbackClient


@dataclass(frozen=True)
class Answer:
    at: float
    variant: str  # "teacher" | "student" | "error"
    latency_s: float
    model_id: str | None = None  # the bundle that answered


@dataclass(frozen=True)
class VariantWindow:
    requests: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Window:
    rate_per_s: float
    errors: int
    variants: dict[str, VariantWindow]

    def share(self, variant: str) -> float:
        total = sum(v.requests for v in self.variants.values())
        return self.variants[variant].requests / total if total and variant in self.variants else 0.0


class LabelFeed:
    """The true labels of a `share` of the answers, sent `delay_s` after each through the typed
    FeedbackClient, in one batch every half second, as a product's backend would."""

    def __init__(self, client: FeedbackClient, share: float = 0.5, delay_s: float = 3.0, seed: int = 0) -> None:
        self._client, self._share, self._delay_s = client, share, delay_s
        self._rng = random.Random(seed)
        self._due: list[tuple[float, str, str]] = []  # (when, request id, label)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="labels")
        self.labels = self.refused = 0

    def offer(self, request_id: str, label: str) -> None:
        """An answer and its true label: sent later, or not at all (outside the share)."""
        with self._lock:
            if self._rng.random() < self._share:
                heapq.heappush(self._due, (time.monotonic() + self._delay_s, request_id, label))

    def start(self) -> LabelFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                due = []
                while self._due and self._due[0][0] <= time.monotonic():
                    due.append(heapq.heappop(self._due))
            if not due:
                continue
            try:
                self.labels += self._client.send(
                    [FeedbackItem(request_id=r, label=label) for _, r, label in due]
                ).labels
            except AdminCallError:  # e.g. a request id signed before the routers had the key
                self.refused += len(due)


class LoadGenerator:
    def __init__(
        self,
        url: str,
        examples: list[tuple[str, str | None]],  # (text, its true label: None when unknown)
        rate: float,
        users: int = 500,
        seed: int = 0,
        labels: LabelFeed | None = None,
    ) -> None:
        if rate <= 0 or not examples:
            raise ValueError(f"need a positive rate and some examples; got rate={rate}, {len(examples)} examples")
        self._url, self._examples, self._rate, self._users = url, examples, rate, users
        self._labels = labels
        self._rng = random.Random(seed)
        self._answers: deque[Answer] = deque(maxlen=200_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="loadgen")
        self.sent = self.shed = 0

    def start(self) -> LoadGenerator:
        self._thread.start()
        if self._labels is not None:
            self._labels.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._labels is not None:
            self._labels.stop()

    async def _run(self, max_in_flight: int = 64) -> None:
        limits = httpx.Limits(max_connections=max_in_flight)
        in_flight: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                next_at += 1.0 / self._rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if len(in_flight) >= max_in_flight:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self._one(client))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient) -> None:
        text, label = self._rng.choice(self._examples)
        body = {"inputs": [text], "routing_key": f"user-{self._rng.randrange(self._users)}"}
        self.sent += 1
        started = time.monotonic()
        model_id = None
        try:
            response = await client.post(self._url, json=body)
            answer = response.json() if response.status_code == 200 else {"variant": "error"}
            variant, model_id = answer["variant"], answer.get("model_id")
            if self._labels is not None and label is not None and variant != "error":
                self._labels.offer(answer["request_id"], label)
        except (httpx.HTTPError, ValueError, KeyError):
            variant = "error"
        done = time.monotonic()
        self._answers.append(Answer(done, variant, done - started, model_id))

    def failures_since(self, since: float = 0.0) -> tuple[int, int]:
        """(answers, failed answers) that completed after `since` (time.monotonic())."""
        recent = [a for a in list(self._answers) if a.at >= since]
        return len(recent), sum(a.variant == "error" for a in recent)

    def answers_from(self, model_id: str, since: float = 0.0) -> int:
        """How many answers that completed after `since` came from bundle `model_id`."""
        return sum(a.model_id == model_id for a in list(self._answers) if a.at >= since)

    def window(self, seconds: float = 10.0) -> Window:
        since = time.monotonic() - seconds
        recent = [a for a in list(self._answers) if a.at >= since]
        variants = {}
        for name in ("teacher", "student"):
            ms = np.asarray([a.latency_s * 1000 for a in recent if a.variant == name])
            p50, p99 = (float(np.percentile(ms, 50)), float(np.percentile(ms, 99))) if ms.size else (None, None)
            variants[name] = VariantWindow(int(ms.size), p50, p99)
        errors = sum(a.variant == "error" for a in recent)
        return Window(len(recent) / seconds, errors, variants)
