"""Durable state: the status record, an evidence snapshot, and the append-only event log.

`StateStore` is the three-method Protocol the controller writes through (Flagger keeps its
status on the Canary object; we keep it here). One `save` is one atomic transaction: the
status, the evidence snapshot and the new events land together or not at all, so a crash
never leaves a status without the decision event that produced it, or half an event.

- `SqliteStateStore(path)`: SQLite in WAL mode. Every call opens its own connection (a
  moved, deleted or replaced file is noticed on the next save instead of writing into an
  unlinked inode) and every save is `BEGIN IMMEDIATE ... COMMIT`: SQLite's write-ahead log is
  the "write to a temp, then rename" here, and `synchronous=FULL` makes a commit durable.
- `MemoryStateStore()`: the in-package fake, with an `outage` switch for failure tests.

Every failure to read or write surfaces as `StoreError` naming the path and the cause.
Event ids come from the caller; an id the store already holds is skipped (idempotent replay).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from rollout.errors import StoreError
from rollout.events import Event, EventKind
from rollout.evidence import Evidence
from rollout.status import RolloutStatus

__all__ = ["Event", "EventKind", "MemoryStateStore", "SqliteStateStore", "StateStore", "StoredState"]

SCHEMA_VERSION = 2
"""1 -> 2: weights became fractions (`weight`, `intents.manual_weight`) instead of percents;
a version-1 file is migrated in place when opened (event payloads keep the words they were
written with: the log is history)."""
MAX_EVENTS_PAGE = 1000
"""The most events one `events()` call returns, whatever `limit` asks."""


class StoredState(BaseModel):
    """What a restarted controller reloads: the status, its evidence, and the last event id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: RolloutStatus
    evidence: Evidence
    last_event_id: int = Field(default=0, ge=0)


class StateStore(Protocol):
    """Where the controller keeps its state; every method raises StoreError on failure."""

    def load(self) -> StoredState | None:
        """The last saved state, or None when nothing was ever saved."""
        ...

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event]) -> None:
        """Replace status and evidence and append `events`, in one atomic transaction."""
        ...

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        """Up to `limit` events with id > `after_id`, oldest first."""
        ...


def _page(limit: int) -> int:
    return max(0, min(limit, MAX_EVENTS_PAGE))


class MemoryStateStore:
    """The in-memory fake. Set `outage` to a message and every call raises StoreError with it."""

    location = "(memory)"

    def __init__(self) -> None:
        self._state: tuple[RolloutStatus, Evidence] | None = None
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self.outage: str | None = None
        self.saves = 0

    def _check(self, operation: str) -> None:
        if self.outage is not None:
            cause = OSError(self.outage)
            raise StoreError(f"state store {self.location}: {operation} failed: {self.outage}", self.location, cause)

    def load(self) -> StoredState | None:
        with self._lock:
            self._check("load")
            if self._state is None:
                return None
            last = self._events[-1].id if self._events else 0
            return StoredState(status=self._state[0], evidence=self._state[1], last_event_id=last)

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event]) -> None:
        with self._lock:
            self._check("save")
            held = {event.id for event in self._events}
            fresh = [event for event in events if event.id not in held]
            self._state = (status, evidence)
            self._events = sorted([*self._events, *fresh], key=lambda event: event.id)
            self.saves += 1

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        with self._lock:
            self._check("read events")
            return [event for event in self._events if event.id > after_id][: _page(limit)]


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), status TEXT NOT NULL, evidence TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,"
    " action TEXT NOT NULL, actor TEXT, reason TEXT NOT NULL, payload TEXT NOT NULL)",
)
_UPSERT_STATE = (
    "INSERT INTO state (id, status, evidence) VALUES (1, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, evidence = excluded.evidence"
)
_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (id, at, kind, action, actor, reason, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_EVENTS = "SELECT id, at, kind, action, actor, reason, payload FROM events WHERE id > ? ORDER BY id LIMIT ?"

_EventRow = tuple[int, float, str, str, str | None, str, str]


def _row(event: Event) -> _EventRow:
    payload = json.dumps(event.model_dump(mode="json")["payload"], separators=(",", ":"))
    return (event.id, event.at, event.kind.value, event.action, event.actor, event.reason, payload)


def _event(row: _EventRow) -> Event:
    id_, at, kind, action, actor, reason, payload = row
    return Event(
        id=id_, at=at, kind=EventKind(kind), action=action, actor=actor, reason=reason, payload=json.loads(payload)
    )


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Percent weights to fractions in the status record, inside the opening transaction."""
    row = db.execute("SELECT status FROM state WHERE id = 1").fetchone()
    if row is not None:
        status = json.loads(row[0])
        status["weight"] = status.pop("weight_percent") / 100.0
        intents = status.get("intents", {})
        if "manual_weight_percent" in intents:
            manual = intents.pop("manual_weight_percent")
            intents["manual_weight"] = None if manual is None else manual / 100.0
        db.execute("UPDATE state SET status = ? WHERE id = 1", (json.dumps(status),))
    db.execute("UPDATE schema_version SET version = 2")


class SqliteStateStore:
    """The durable store: one SQLite file (plus its -wal and -shm) at `path`.

    The constructor creates the file and schema when missing (the parent directory must
    exist) and refuses a file written by another schema version. Afterwards the file is only
    ever opened read-write, never created: if it disappears, saves fail loudly with StoreError
    rather than starting an empty log under the controller's feet.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._busy_timeout_s = busy_timeout_s
        with self._transaction("create schema", create=True) as db:
            for statement in _SCHEMA:
                db.execute(statement)
            found = [row[0] for row in db.execute("SELECT version FROM schema_version")]
            if not found:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif found == [1]:
                _migrate_1_to_2(db)
            elif found != [SCHEMA_VERSION]:
                raise StoreError(
                    f"state store {self.location}: schema version {found} on disk, this code reads "
                    f"version {SCHEMA_VERSION}",
                    self.location,
                )

    def _connect(self, create: bool) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}"
        db = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            if create:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _transaction(self, operation: str, *, create: bool = False, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction (writes take the lock up front: `BEGIN IMMEDIATE`);
        any failure rolls back and surfaces as StoreError naming the path and the cause."""
        try:
            with closing(self._connect(create)) as db:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError, ValueError) as error:  # ValueError: pydantic, JSON
            message = f"state store {self.location}: {operation} failed: {type(error).__name__}: {error}"
            raise StoreError(message, self.location, error) from error

    def load(self) -> StoredState | None:
        with self._transaction("load", write=False) as db:
            row = db.execute("SELECT status, evidence FROM state WHERE id = 1").fetchone()
            if row is None:
                return None
            last = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            status = RolloutStatus.model_validate_json(row[0])
            evidence = Evidence.model_validate_json(row[1])
            return StoredState(status=status, evidence=evidence, last_event_id=last)

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event]) -> None:
        with self._transaction("save") as db:
            db.execute(_UPSERT_STATE, (status.model_dump_json(), evidence.model_dump_json()))
            db.executemany(_INSERT_EVENT, [_row(event) for event in events])

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        with self._transaction("read events", write=False) as db:
            rows = db.execute(_SELECT_EVENTS, (after_id, _page(limit))).fetchall()
            return [_event(row) for row in rows]
