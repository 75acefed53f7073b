"""The SQLite file behind `SqliteStateStore`: its schema and statements, the migrations between
schema versions, and the journal mode a file's filesystem allows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Literal

from rollout.errors import StoreError
from rollout.events import Event, EventKind

SCHEMA_VERSION = 4
"""1 -> 2: weights became fractions (`weight`, `intents.manual_weight`) instead of percents
(event payloads keep the words they were written with: the log is history). 2 -> 3: the
`writer` table (the current writer term and its holder). 3 -> 4: the `receipts` table (the
label ledger). Older files are migrated in place when opened."""
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "afs", "gpfs", "beegfs"}
)
"""Filesystem types (as /proc/self/mountinfo names them) that SQLite's WAL mode must not be
used on; `fuse.*` mounts (gcsfuse, s3fs, sshfs, ...) count as network ones too."""


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS writer ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL, holder TEXT NOT NULL, claimed_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), status TEXT NOT NULL, evidence TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,"
    " action TEXT NOT NULL, actor TEXT, reason TEXT NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS receipts ("
    " request_id TEXT PRIMARY KEY, answers TEXT, labelled INTEGER NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS receipts_expiry ON receipts (expires_at)",
)
UPSERT_STATE = (
    "INSERT INTO state (id, status, evidence) VALUES (1, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, evidence = excluded.evidence"
)
INSERT_EVENT = "INSERT INTO events (id, at, kind, action, actor, reason, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"
SELECT_EVENT = "SELECT id, at, kind, action, actor, reason, payload FROM events WHERE id = ?"
SELECT_EVENTS = "SELECT id, at, kind, action, actor, reason, payload FROM events WHERE id > ? ORDER BY id LIMIT ?"
SELECT_WRITER = "SELECT term, holder, claimed_at FROM writer WHERE id = 1"
UPSERT_WRITER = (
    "INSERT INTO writer (id, term, holder, claimed_at) VALUES (1, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET term = excluded.term, holder = excluded.holder, claimed_at = excluded.claimed_at"
)

_EventRow = tuple[int, float, str, str, str | None, str, str]


def event_row(event: Event) -> _EventRow:
    payload = json.dumps(event.model_dump(mode="json")["payload"], separators=(",", ":"))
    return (event.id, event.at, event.kind.value, event.action, event.actor, event.reason, payload)


def row_event(row: _EventRow) -> Event:
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


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """The writer table is created with the schema; nobody has claimed the store yet."""
    db.execute("UPDATE schema_version SET version = 3")


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """The receipts table is created with the schema; no label was taken yet."""
    db.execute("UPDATE schema_version SET version = 4")


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}


def open_schema(db: sqlite3.Connection, location: str) -> None:
    """Create the tables where missing, refuse another schema version, migrate an older one
    (inside the caller's transaction)."""
    for statement in SCHEMA:
        db.execute(statement)
    found = [row[0] for row in db.execute("SELECT version FROM schema_version")]
    if not found:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif len(found) != 1 or not 1 <= found[0] <= SCHEMA_VERSION:
        raise StoreError(
            f"state store {location}: schema version {found} on disk, this code reads version {SCHEMA_VERSION}",
            location,
        )
    for version in range(found[0] if found else SCHEMA_VERSION, SCHEMA_VERSION):
        _MIGRATIONS[version](db)


JournalMode = Literal["wal", "delete"]


def journal_mode_for(path: Path, mountinfo: str) -> JournalMode:
    """The journal for a store at `path`: WAL on a local filesystem, the rollback journal on a
    network one (`mountinfo` is the text of /proc/self/mountinfo; the mount whose point is the
    longest prefix of `path` decides)."""
    target, best, fstype = str(path), -1, ""
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        if len(fields) != 2 or len(before := fields[0].split()) < 5 or not (after := fields[1].split()):
            continue
        point = before[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, fstype = len(point), after[0]
    return "delete" if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.") else "wal"


def mount_table() -> str:
    """This process's mount table (the text `journal_mode_for` reads)."""
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux: no table to read, assume a local disk
        return ""
