"""Durable state: the status record, an evidence snapshot, the append-only event log, and the
label ledger (which request ids have been labelled, and both answers of shadowed requests).

`StateStore` is the three-method Protocol the controller writes through (Flagger keeps its
status on the Canary object; we keep it here). One `save` is one atomic transaction: the
status, the evidence snapshot and the new events land together or not at all, so a crash
never leaves a status without the decision event that produced it, or half an event.

- `SqliteStateStore(path)`: one SQLite file. Every call opens its own connection (a moved,
  deleted or replaced file is noticed on the next save instead of writing into an unlinked
  inode) and every save is `BEGIN IMMEDIATE ... COMMIT`; `synchronous=FULL` makes a commit
  durable. The journal is WAL on a local disk and the rollback journal (`DELETE`) on a
  network filesystem, where SQLite documents WAL as unsafe (it needs shared memory between
  every process that opens the file): `journal_mode_for` reads the mount table. The file's
  schema, statements and migrations live in rollout/sqlite_file.py.
- `MemoryStateStore()`: the in-package fake, with an `outage` switch for failure tests.

One writer: a controller first `claim`s the store, which grants it the next writer term, and
every `save` carries that term and is refused with `FencedError`, inside its own transaction,
once a newer claim exists. Two controllers on one store (a RayService upgrade, a replica
restarted while the old one still ticks) therefore never both write; the newest wins.

Every failure to read or write surfaces as `StoreError` naming the path and the cause.
Event ids come from the caller: an id the store already holds with the same content is a
replay and skipped (a "failed" commit that had in fact landed); with other content it is a
`StoreError`, never a silent drop.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from rollout.errors import FencedError, RepeatedRequestError, StoreError
from rollout.events import Event, EventKind
from rollout.evidence import Evidence, PairedAnswers
from rollout.sqlite_file import (
    INSERT_EVENT,
    SELECT_EVENT,
    SELECT_EVENTS,
    SELECT_WRITER,
    UPSERT_STATE,
    UPSERT_WRITER,
    JournalMode,
    event_row,
    journal_mode_for,
    mount_table,
    open_schema,
    row_event,
)
from rollout.status import RolloutStatus

__all__ = ["Claim", "Event", "EventKind", "MemoryStateStore", "SqliteStateStore", "StateStore", "StoredState"]

MAX_EVENTS_PAGE = 1000
"""The most events one `events()` call returns, whatever `limit` asks."""


class StoredState(BaseModel):
    """What a restarted controller reloads: the status, its evidence, and the last event id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: RolloutStatus
    evidence: Evidence
    last_event_id: int = Field(default=0, ge=0)


class Claim(BaseModel):
    """A writer term granted by `claim`, and whom it was taken from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    term: int = Field(ge=1)
    holder: str
    claimed_at: float
    previous_holder: str | None = None
    previous_claimed_at: float | None = None


class StateStore(Protocol):
    """Where the controller keeps its state; every method raises StoreError on failure."""

    def claim(self, holder: str, at: float) -> Claim:
        """Become the only writer: the next term; every save with an older term is refused from now."""
        ...

    def load(self) -> StoredState | None:
        """The last saved state, or None when nothing was ever saved."""
        ...

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event], *, term: int) -> None:
        """Replace status and evidence and append `events`, in one atomic transaction that first
        checks `term` is still the newest claim (FencedError if not)."""
        ...

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        """Up to `limit` events with id > `after_id`, oldest first."""
        ...

    def keep_answers(self, answers: Sequence[PairedAnswers], expires_at: float) -> None:
        """Keep both answers of shadowed requests until `expires_at` (ids already held are left)."""
        ...

    def redeem(self, request_ids: Sequence[str], now: float, expires_at: float) -> dict[str, PairedAnswers | None]:
        """Mark every id labelled (remembered until `expires_at`) and return the answers kept for
        each, None where none were; all or nothing: RepeatedRequestError, and nothing marked, if
        any id was labelled before or appears twice. Rows past their expiry are dropped."""
        ...


def _repeated(request_id: str) -> RepeatedRequestError:
    return RepeatedRequestError(f"request_id for nonce {request_id}: a label for it was already taken")


def _first_twice(request_ids: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for request_id in request_ids:
        if request_id in seen:
            return request_id
        seen.add(request_id)
    return None


def _page(limit: int) -> int:
    return max(0, min(limit, MAX_EVENTS_PAGE))


def _fenced(location: str, term: int, current: Claim | None) -> FencedError:
    if current is None:
        now = "nobody holds this store (was it replaced?)"
    else:
        now = f"{current.holder} holds it at term {current.term} (claimed at {current.claimed_at:.0f})"
    return FencedError(
        f"state store {location}: writer term {term} is superseded: {now}; this controller no longer writes",
        location,
    )


def _collision(location: str, event_id: int) -> StoreError:
    return StoreError(
        f"state store {location}: event id {event_id} is already in the log with other content "
        "(two writers numbering events?); nothing of this save was written",
        location,
    )


class MemoryStateStore:
    """The in-memory fake. Set `outage` to a message and every call raises StoreError with it."""

    location = "(memory)"

    def __init__(self) -> None:
        self._state: tuple[RolloutStatus, Evidence] | None = None
        self._events: list[Event] = []
        self._writer: Claim | None = None
        self._receipts: dict[str, tuple[PairedAnswers | None, bool, float]] = {}  # id: answers, labelled, expiry
        self._next_expiry = math.inf  # no receipt row expires before this: purging is skipped until then
        self._lock = threading.Lock()
        self.outage: str | None = None
        self.saves = 0

    def _check(self, operation: str) -> None:
        if self.outage is not None:
            cause = OSError(self.outage)
            raise StoreError(f"state store {self.location}: {operation} failed: {self.outage}", self.location, cause)

    def claim(self, holder: str, at: float) -> Claim:
        with self._lock:
            self._check("claim")
            self._writer = _next_claim(self._writer, holder, at)
            return self._writer

    def load(self) -> StoredState | None:
        with self._lock:
            self._check("load")
            if self._state is None:
                return None
            last = self._events[-1].id if self._events else 0
            return StoredState(status=self._state[0], evidence=self._state[1], last_event_id=last)

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event], *, term: int) -> None:
        with self._lock:
            self._check("save")
            if self._writer is None or self._writer.term != term:
                raise _fenced(self.location, term, self._writer)
            held = {event.id: event for event in self._events}
            if clash := next((e for e in events if e.id in held and held[e.id] != e), None):
                raise _collision(self.location, clash.id)
            fresh = [event for event in events if event.id not in held]
            self._state = (status, evidence)
            self._events = sorted([*self._events, *fresh], key=lambda event: event.id)
            self.saves += 1

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        with self._lock:
            self._check("read events")
            return [event for event in self._events if event.id > after_id][: _page(limit)]

    def keep_answers(self, answers: Sequence[PairedAnswers], expires_at: float) -> None:
        with self._lock:
            self._check("keep answers")
            for kept in answers:
                self._receipts.setdefault(kept.request_id, (kept, False, expires_at))
            self._next_expiry = min(self._next_expiry, expires_at)

    def redeem(self, request_ids: Sequence[str], now: float, expires_at: float) -> dict[str, PairedAnswers | None]:
        with self._lock:
            self._check("redeem labels")
            if now > self._next_expiry:
                self._receipts = {key: row for key, row in self._receipts.items() if row[2] >= now}
                self._next_expiry = min((row[2] for row in self._receipts.values()), default=math.inf)
            twice = _first_twice(request_ids)
            done = twice or next((key for key in request_ids if self._receipts.get(key, (None, False))[1]), None)
            if done is not None:
                raise _repeated(done)
            found = {key: self._receipts.get(key, (None, False, 0.0))[0] for key in request_ids}
            for key, answers in found.items():
                self._receipts[key] = (answers, True, expires_at)
            self._next_expiry = min(self._next_expiry, expires_at)
            return found


def default_holder() -> str:
    """Who claims the store: host, process and a random suffix (two controllers in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _next_claim(current: Claim | None, holder: str, at: float) -> Claim:
    if current is None:
        return Claim(term=1, holder=holder, claimed_at=at)
    return Claim(
        term=current.term + 1,
        holder=holder,
        claimed_at=at,
        previous_holder=current.holder,
        previous_claimed_at=current.claimed_at,
    )


class SqliteStateStore:
    """The durable store: one SQLite file at `path` (plus its -wal and -shm in WAL mode).

    The constructor creates the file and schema when missing (the parent directory must
    exist) and refuses a file written by another schema version. Afterwards the file is only
    ever opened read-write, never created: if it disappears, saves fail loudly with StoreError
    rather than starting an empty log under the controller's feet.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0, journal_mode: JournalMode | None = None
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.journal_mode: JournalMode = journal_mode or journal_mode_for(self.path.absolute(), mount_table())
        self._busy_timeout_s = busy_timeout_s
        with self._transaction("create schema", create=True) as db:
            open_schema(db, self.location)

    def _connect(self, create: bool) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}"
        db = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            if create:  # outside any transaction; WAL persists in the file, DELETE converts it back
                db.execute(f"PRAGMA journal_mode={self.journal_mode.upper()}")
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

    def claim(self, holder: str, at: float) -> Claim:
        with self._transaction("claim") as db:
            claim = _next_claim(read_writer(db), holder, at)
            db.execute(UPSERT_WRITER, (claim.term, claim.holder, claim.claimed_at))
            return claim

    def load(self) -> StoredState | None:
        with self._transaction("load", write=False) as db:
            row = db.execute("SELECT status, evidence FROM state WHERE id = 1").fetchone()
            if row is None:
                return None
            last = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            status = RolloutStatus.model_validate_json(row[0])
            evidence = Evidence.model_validate_json(row[1])
            return StoredState(status=status, evidence=evidence, last_event_id=last)

    def save(self, status: RolloutStatus, evidence: Evidence, events: Sequence[Event], *, term: int) -> None:
        with self._transaction("save") as db:
            current = read_writer(db)
            if current is None or current.term != term:
                raise _fenced(self.location, term, current)
            db.execute(UPSERT_STATE, (status.model_dump_json(), evidence.model_dump_json()))
            for row in map(event_row, events):
                held = db.execute(SELECT_EVENT, (row[0],)).fetchone()
                if held is None:
                    db.execute(INSERT_EVENT, row)
                elif row_event(held) != row_event(row):  # compared parsed: JSON spacing is not content
                    raise _collision(self.location, row[0])

    def events(self, after_id: int = 0, limit: int = 100) -> list[Event]:
        with self._transaction("read events", write=False) as db:
            rows = db.execute(SELECT_EVENTS, (after_id, _page(limit))).fetchall()
            return [row_event(row) for row in rows]

    def keep_answers(self, answers: Sequence[PairedAnswers], expires_at: float) -> None:
        if not answers:
            return
        rows = [(kept.request_id, kept.model_dump_json(), expires_at) for kept in answers]
        with self._transaction("keep answers") as db:
            db.executemany("INSERT OR IGNORE INTO receipts VALUES (?, ?, 0, ?)", rows)

    def redeem(self, request_ids: Sequence[str], now: float, expires_at: float) -> dict[str, PairedAnswers | None]:
        if twice := _first_twice(request_ids):
            raise _repeated(twice)
        with self._transaction("redeem labels") as db:
            db.execute("DELETE FROM receipts WHERE expires_at < ?", (now,))
            found: dict[str, PairedAnswers | None] = dict.fromkeys(request_ids)
            for start in range(0, len(request_ids), 500):  # SQLite caps the bound parameters
                chunk = request_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT request_id, answers, labelled FROM receipts WHERE request_id IN ({marks})"
                for request_id, answers, labelled in db.execute(query, chunk):
                    if labelled:
                        raise _repeated(request_id)
                    found[request_id] = PairedAnswers.model_validate_json(answers) if answers else None
            rows = [(request_id, expires_at) for request_id in request_ids]
            db.executemany(
                "INSERT INTO receipts VALUES (?, NULL, 1, ?) "
                "ON CONFLICT (request_id) DO UPDATE SET labelled = 1, expires_at = excluded.expires_at",
                rows,
            )
            return found


def read_writer(db: sqlite3.Connection) -> Claim | None:
    row = db.execute(SELECT_WRITER).fetchone()
    return None if row is None else Claim(term=row[0], holder=row[1], claimed_at=row[2])
