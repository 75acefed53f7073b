"""Background test traffic through a router: threads posting one random review per request."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from rollout.feedback import FeedbackItem
from serving.admin_client import AdminCallError, FeedbackClient


class Traffic:
    """Background clients posting one random review per request until stopped; each answer is
    kept with its `input` and the monotonic time it arrived `at`."""

    def __init__(
        self,
        client: httpx.Client,
        texts: list[str],
        workers: int = 3,
        segment_of: Callable[[str], str] | None = None,  # each request names the segment of its text
    ) -> None:
        self.client, self.texts, self.segment_of = client, texts, segment_of
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(workers)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            try:
                text = rng.choice(self.texts)
                segment = {"segment": self.segment_of(text)} if self.segment_of else {}
                response = self.client.post("/v1/predict", json={"inputs": [text], **segment})
            except httpx.HTTPError as exc:  # a reset or a timeout is a failure a client sees too
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code == 200:
                self.answers.append(response.json() | {"input": text, "at": time.monotonic()})
            else:
                self.failures.append(f"{response.status_code}: {response.text[:200]}")

    def answered_since(self, seen: int, count: int, within_s: float = 60.0) -> list[dict[str, Any]]:
        """The answers after the first `seen`, once there are at least `count` of them: a test
        waits for the traffic it needs to look at, never for a clock to have been fast enough."""
        deadline = time.monotonic() + within_s
        while len(self.answers) - seen < count:
            assert time.monotonic() < deadline, f"{len(self.answers) - seen} answers of {count} in {within_s} s"
            assert not self._stop.is_set(), "traffic stopped"
            time.sleep(0.05)
        return self.answers[seen:]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


class Labeller:
    """Feedback for a Traffic's answers, as a product's backend sends it: `delay_s` after each
    answer, in batches, labelled by `truth(answer)` (None: leave that answer unlabelled)."""

    def __init__(
        self,
        traffic: Traffic,
        feedback: FeedbackClient,
        truth: Callable[[dict[str, Any]], str | None],
        delay_s: float = 1.0,
    ) -> None:
        self.traffic, self.feedback, self.truth, self.delay_s = traffic, feedback, truth, delay_s
        self.labelled = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        done = 0
        while not self._stop.wait(0.25):
            due = [a for a in self.traffic.answers[done:] if a["at"] <= time.monotonic() - self.delay_s]
            done += len(due)
            items = [
                FeedbackItem(request_id=answer["request_id"], label=label)
                for answer in due
                if (label := self.truth(answer)) is not None
            ]
            if items:
                try:
                    self.labelled += self.feedback.send(items).labels
                except AdminCallError as exc:
                    self.failures.append(str(exc))

    def __enter__(self) -> Labeller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
