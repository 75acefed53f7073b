"""The controller's durability and notification: numbering events, saving, surviving outages.

`Journal` sits between the controller and its `StateStore` / `WebhookSender`. Two kinds of
events pass through it:

- committed events (`commit`) happened whatever the store says (an operator's intent was
  accepted, a rollback took effect, the store failed): they are numbered, published to the
  webhooks at once and kept in memory until a save carries them;
- drafts handed to `persist` exist only if the save succeeds (an advance the controller will
  not make without a durable record): numbered after the pending events, published after the
  commit, and discarded with their ids unused when the save fails.

Every save carries all pending events, so after an outage they reach the store exactly once
(the store also skips ids it already holds, in case a "failed" commit had in fact landed).
The first failure of an outage logs a `store/write_failed` event and the save that ends it a
`store/recovered` event, both in the log once the store is back.

Every save carries the writer term the controller claimed. When another controller has
claimed the store since (`FencedError`), the journal is fenced for good: it never writes to the
store again nor publishes an event (its ids now belong to the new writer's log; only events
committed before the fencing was discovered may have reached the webhooks), `fenced` holds the
error, and the store health says who took over. The new holder records the takeover in its own
`controller/resumed` event.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout.errors import FencedError, StoreError
from rollout.events import Event, EventKind
from rollout.evidence import Evidence
from rollout.status import RolloutStatus
from rollout.store import StateStore
from rollout.views import StoreHealth
from rollout.webhooks import WebhookSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draft:
    """An event before it has an id and a time."""

    kind: EventKind
    action: str
    reason: str
    payload: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None

    def event(self, event_id: int, at: float) -> Event:
        return Event(
            id=event_id,
            at=at,
            kind=self.kind,
            action=self.action,
            actor=self.actor,
            reason=self.reason,
            payload=self.payload,
        )


class Journal:
    """Pending events, event ids and store health for one controller (callers hold its lock)."""

    def __init__(self, store: StateStore, webhooks: WebhookSender, term: int, last_event_id: int = 0) -> None:
        self._store = store
        self._webhooks = webhooks
        self._term = term
        self._next_id = last_event_id + 1
        self._pending: list[Event] = []
        self.fenced: FencedError | None = None
        self.health = StoreHealth(
            location=str(getattr(store, "location", type(store).__name__)),
            journal_mode=getattr(store, "journal_mode", None),
            term=term,
        )

    @property
    def last_id(self) -> int:
        """The id of the newest event (saved or pending); 0 before any."""
        return self._next_id - 1

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def commit(self, draft: Draft, now: float) -> Event:
        """Number an event that happened whatever the store says, keep it for saving, publish it.
        A fenced journal does neither: its ids now belong to the new writer's log."""
        event = draft.event(self._next_id, now)
        self._next_id += 1
        if self.fenced is not None:
            log.info("fenced controller: not logged: %s/%s: %s", event.kind.value, event.action, event.reason)
            return event
        self._pending.append(event)
        self.health = self.health.model_copy(update={"pending_events": len(self._pending)})
        self._webhooks.send(event)
        return event

    def persist(self, now: float, status: RolloutStatus, evidence: Evidence, drafts: Sequence[Draft] = ()) -> bool:
        """Save `status`, `evidence`, the pending events and `drafts` in one transaction.

        True on success (drafts become events, published after the commit). False when the
        store failed or this journal is fenced: the drafts are dropped, the failure is recorded,
        nothing else changes.
        """
        if self.fenced is not None:
            return False
        if not self.health.healthy:
            drafts = (self._recovery_draft(now), *drafts)
        fresh = [draft.event(self._next_id + offset, now) for offset, draft in enumerate(drafts)]
        try:
            self._store.save(status, evidence, [*self._pending, *fresh], term=self._term)
        except FencedError as error:
            self._fence(error, now)
            return False
        except StoreError as error:
            self._failed(error, now)
            return False
        self._next_id += len(fresh)
        self._pending.clear()
        self.health = self.health.model_copy(
            update={
                "healthy": True,
                "consecutive_failures": 0,
                "failing_since": None,
                "last_saved_at": now,
                "pending_events": 0,
            }
        )
        for event in fresh:
            self._webhooks.send(event)
        return True

    def events(self, after_id: int, limit: int) -> list[Event]:
        """Saved events merged with pending ones, oldest first (StoreError if unreadable). A fenced
        journal shows the store's log alone: its pending events will never be saved."""
        stored = self._store.events(after_id, limit)
        if self.fenced is not None:
            return stored
        seen = {event.id for event in stored}
        unsaved = [event for event in self._pending if event.id > after_id and event.id not in seen]
        return sorted([*stored, *unsaved], key=lambda event: event.id)[: max(0, limit)]

    def _failed(self, error: StoreError, now: float) -> None:
        health, first = self.health, self.health.healthy
        self.health = health.model_copy(
            update={
                "healthy": False,
                "failures_total": health.failures_total + 1,
                "consecutive_failures": health.consecutive_failures + 1,
                "failing_since": now if first else health.failing_since,
                "last_error": str(error),
                "last_error_at": now,
            }
        )
        failures = self.health.consecutive_failures
        if failures & (failures - 1) == 0:  # 1, 2, 4, 8, ...: an outage logs, but does not flood
            log.warning("rollout state not saved (%d failures in a row): %s", failures, error)
        if first:
            reason = f"{error}; holding (no advance) until a save succeeds"
            payload = {"location": error.path, "error": str(error)}
            self.commit(Draft(EventKind.STORE, "write_failed", reason, payload), now)

    def _fence(self, error: FencedError, now: float) -> None:
        log.error("rollout controller fenced: %s", error)
        self.fenced = error
        # `healthy` stays as it was: the store is fine, this controller is just no longer its writer
        self.health = self.health.model_copy(update={"fenced": True, "last_error": str(error), "last_error_at": now})

    def _recovery_draft(self, now: float) -> Draft:
        health = self.health
        outage_s = now - (health.failing_since if health.failing_since is not None else now)
        reason = (
            f"state store {health.location} writable again after {health.consecutive_failures} failed saves "
            f"over {outage_s:.1f} s; {len(self._pending)} buffered events saved with this one"
        )
        payload = {"failed_saves": health.consecutive_failures, "outage_s": outage_s, "flushed": len(self._pending)}
        return Draft(EventKind.STORE, "recovered", reason, payload)
