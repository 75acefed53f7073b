"""Background test traffic through a router: threads posting one random review per request."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx


class Traffic:
    """Background clients posting one random review per request until stopped."""

    def __init__(self, client: httpx.Client, texts: list[str], workers: int = 3) -> None:
        self.client, self.texts = client, texts
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(workers)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            try:
                response = self.client.post("/v1/predict", json={"inputs": [rng.choice(self.texts)]})
            except httpx.HTTPError as exc:  # a reset or a timeout is a failure a client sees too
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code == 200:
                self.answers.append(response.json())
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
