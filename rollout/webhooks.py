"""Webhooks: every event the controller logs is also POSTed as JSON to the configured URLs.

`send(event)` never blocks and never raises: it is called while the controller holds its lock,
in the middle of a decision. `HttpWebhookSender` puts the event on a bounded queue that one
background thread drains (a full queue drops the event and counts the drop); each URL gets
`1 + retries` attempts with exponential backoff on a timeout, a connection error, a 408, a 429
or a 5xx. Other 4xx answers are final: retrying a malformed request will not help.

Webhook URLs often embed a secret (Slack, PagerDuty), so errors and logs name the host only.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from rollout.errors import WebhookError
from rollout.events import Event

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({408, 429})
_STOP = object()


class WebhookStats(BaseModel):
    """Counts since the sender was built: `queued` counts events accepted; `delivered`, `failed`
    and `dropped` (queue full, or closed) count (event, URL) pairs; `retries` counts re-attempts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    last_error: str | None = None


class WebhookSender(Protocol):
    """Where the controller's events go: fire and forget."""

    def send(self, event: Event) -> None:
        """Queue `event` for delivery; returns at once, never raises."""
        ...

    def stats(self) -> WebhookStats:
        """Delivery counts, for the status surface."""
        ...


class RecordingWebhookSender:
    """The in-package fake: keeps every event it is handed, in order."""

    def __init__(self) -> None:
        self.sent: list[Event] = []
        self._lock = threading.Lock()

    def send(self, event: Event) -> None:
        with self._lock:
            self.sent.append(event)

    def stats(self) -> WebhookStats:
        with self._lock:
            count = len(self.sent)
        return WebhookStats(queued=count, delivered=count)


def _checked_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise WebhookError(f"webhook URL is not valid: {error}") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookError(f"webhook URL must be http(s)://host/..., got scheme {parsed.scheme!r}")
    return parsed


class HttpWebhookSender:
    """POSTs each event as JSON to every URL from one background thread.

    `timeout_s` bounds each attempt; attempt k (from 0) that fails retryably waits
    `backoff_s * 2**k` before the next. `transport` is for tests (an `httpx.MockTransport`).
    With no URLs nothing is started and `send` does nothing.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_queue: int = 1000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_queue < 1:
            raise WebhookError(
                f"need timeout_s > 0, retries >= 0, backoff_s >= 0, max_queue >= 1; got timeout_s={timeout_s}, "
                f"retries={retries}, backoff_s={backoff_s}, max_queue={max_queue}"
            )
        self._urls = [_checked_url(url) for url in urls]
        self._retries = retries
        self._backoff_s = backoff_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Condition()
        self._counts = {"queued": 0, "delivered": 0, "failed": 0, "dropped": 0, "retries": 0}
        self._last_error: str | None = None
        self._unfinished = 0
        self._closed = False
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False)
        self._thread: threading.Thread | None = None
        if self._urls:
            self._thread = threading.Thread(target=self._run, name="kdcanary-webhooks", daemon=True)
            self._thread.start()

    def send(self, event: Event) -> None:
        if not self._urls:
            return
        body = event.model_dump_json().encode()
        with self._lock:
            if self._closed:
                self._counts["dropped"] += len(self._urls)
                return
            try:
                self._queue.put_nowait(body)
            except queue.Full:
                self._counts["dropped"] += len(self._urls)
                log.warning("webhook queue full (%d events): dropped event %d", self._queue.maxsize, event.id)
                return
            self._counts["queued"] += 1
            self._unfinished += 1

    def stats(self) -> WebhookStats:
        with self._lock:
            return WebhookStats(**self._counts, last_error=self._last_error)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event was delivered or given up; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._unfinished == 0, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting events, give queued ones up to `timeout_s` to go out, stop the thread."""
        with self._lock:
            self._closed = True
        self.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # a full queue drains fast now: `_stop` is set
                self._queue.put_nowait(_STOP)
            self._thread.join(timeout_s)
        self._client.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or not isinstance(item, bytes):
                return
            for url in self._urls:
                if self._stop.is_set():
                    with self._lock:
                        self._counts["dropped"] += 1
                else:
                    self._deliver(url, item)
            with self._lock:
                self._unfinished -= 1
                self._lock.notify_all()

    def _attempt(self, url: httpx.URL, body: bytes) -> tuple[bool, bool, str]:
        """One POST: (delivered, worth retrying, what went wrong)."""
        headers = {"content-type": "application/json", "user-agent": "kdcanary-rollout"}
        try:
            response = self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return False, True, f"{url.host}: {type(error).__name__}"
        if response.is_success:
            return True, False, ""
        retry = response.status_code >= 500 or response.status_code in _RETRYABLE
        return False, retry, f"{url.host}: HTTP {response.status_code}"

    def _deliver(self, url: httpx.URL, body: bytes) -> None:
        problem = ""
        for attempt in range(self._retries + 1):
            delivered, retry, problem = self._attempt(url, body)
            if delivered:
                with self._lock:
                    self._counts["delivered"] += 1
                return
            if not retry or attempt == self._retries:
                break
            with self._lock:
                self._counts["retries"] += 1
            if self._stop.wait(self._backoff_s * 2**attempt):
                break
        attempts = attempt + 1
        with self._lock:
            self._counts["failed"] += 1
            self._last_error = f"{problem} after {attempts} attempt(s)"
        log.warning("webhook delivery failed: %s after %d attempt(s)", problem, attempts)
