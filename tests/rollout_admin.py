"""The admin side of test applications: the typed admin client with the session's token, and a
fixed student share set the way an operator sets one, then applied by every router."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import httpx

from compression.data import _read_rotten_tomatoes
from rollout.events import EvidenceSummary
from rollout.views import StatusView
from serving.admin_client import AdminClient
from serving.router import VERSION_HEADER

ADMIN_TOKEN = "integration-test-token"  # what the serve_cluster fixture configures
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK_TOKEN = "integration-feedback-token"  # ... and for POST /v1/feedback
FORCE_TOKEN = "integration-force-token"  # ... and for X-Kdcanary-Variant
SETTLE = 12  # answers in a row from routers holding a pinned weight before it counts as applied


def admin_client(app: httpx.Client) -> AdminClient:
    """The typed admin client for an application served at `app.base_url`."""
    return AdminClient(str(app.base_url), ADMIN_TOKEN, actor="pytest")


def evidence(app: httpx.Client) -> EvidenceSummary:
    """The controller's evidence counts for the application, as its status shows them now."""
    with admin_client(app) as admin:
        return admin.status().evidence


def pin_weight(app: httpx.Client, admin: AdminClient, weight: float, within_s: float = 60.0) -> None:
    """`admin.pin(weight)`, then wait until SETTLE answers in a row came from routers holding it
    (how fast routers adopt a weight is a benchmark figure, not a verdict here)."""
    version = admin.pin(weight, reason="fixed share for a test", within_s=within_s).routing.version
    deadline, streak = time.monotonic() + within_s, 0
    while streak < SETTLE:
        assert time.monotonic() < deadline, f"routers did not adopt weight {weight} in {within_s} s"
        response = app.post("/v1/predict", json={"inputs": ["a pinned share"]})
        assert response.status_code == 200, response.text
        streak = streak + 1 if int(response.headers[VERSION_HEADER]) >= version else 0


def wait_for_status(admin: AdminClient, done: Callable[[StatusView], bool], within_s: float, what: str) -> StatusView:
    """Poll the status until `done` holds for it; fail naming `what` and the last message."""
    deadline = time.monotonic() + within_s
    while not done(view := admin.status()):
        assert time.monotonic() < deadline, f"not {what} after {within_s} s: {view.message}"
        time.sleep(0.2)
    return view


def review_sample(seed: int, count: int) -> list[str]:
    """`count` review sentences of the corpus (cut to 500 characters), the same for a seed."""
    texts = _read_rotten_tomatoes()[0]
    return [text[:500] for text in random.Random(seed).sample(texts, count)]
