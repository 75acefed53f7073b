"""rollout.store: one contract for both stores, then what only a real SQLite file can show."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from rollout.errors import FencedError, StoreError
from rollout.events import Event, EventKind
from rollout.evidence import Evidence, Observation, Variant, add_observations
from rollout.sqlite_file import SCHEMA_VERSION, journal_mode_for
from rollout.status import Intents, Phase, RolloutStatus
from rollout.store import MemoryStateStore, SqliteStateStore, StateStore

StateStoreT = TypeVar("StateStoreT", bound=StateStore)

T0 = 1_000_000.0
TERM = 1  # the writer term of a store's first claim


def claimed(store: StateStoreT) -> StateStoreT:
    assert store.claim("test-controller", T0).term == TERM
    return store


def evidence_with_data() -> Evidence:
    batch = [
        Observation(variant=Variant.STUDENT, latency_s=0.012, agreed=True),
        Observation(variant=Variant.STUDENT, latency_s=0.5, error=True, agreed=False, cost=0.25),
        Observation(variant=Variant.TEACHER, latency_s=0.031),
    ]
    return add_observations(Evidence(epoch=2), batch, T0)


STATUS = RolloutStatus(
    phase=Phase.PAUSED,
    stage_index=2,
    weight=0.1,
    epoch=2,
    stage_started_at=T0,
    ticks=7,
    intents=Intents(pause=True, manual_weight=0.125),
)


def event(event_id: int, action: str = "advance") -> Event:
    return Event(
        id=event_id,
        at=T0 + event_id,
        kind=EventKind.DECISION,
        action=action,
        reason=f"reason {event_id}",
        payload={"gates": [{"name": "agreement", "n": 412, "lower": 0.912}], "nested": {"ok": True}},
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "memory":
        return claimed(MemoryStateStore())
    return claimed(SqliteStateStore(tmp_path / "rollout.db"))


# --- the contract both stores keep ------------------------------------------------------------


def test_a_new_store_loads_nothing(store: StateStore) -> None:
    assert store.load() is None
    assert store.events() == []


def test_save_then_load_round_trips_status_evidence_and_the_last_event_id(store: StateStore) -> None:
    evidence = evidence_with_data()
    store.save(STATUS, evidence, [event(1), event(2)], term=TERM)
    state = store.load()
    assert state is not None
    assert state.status == STATUS
    assert state.evidence == evidence  # histograms and the per-second window survive JSON (int keys)
    assert state.last_event_id == 2
    assert store.events() == [event(1), event(2)]


def test_saving_an_event_id_twice_keeps_it_once(store: StateStore) -> None:
    store.save(STATUS, Evidence(), [event(1), event(2)], term=TERM)
    store.save(STATUS, Evidence(), [event(1), event(2), event(3)], term=TERM)  # a replay after an ambiguous failure
    assert [e.id for e in store.events()] == [1, 2, 3]


def test_events_page_after_an_id_with_a_limit(store: StateStore) -> None:
    store.save(STATUS, Evidence(), [event(i) for i in range(1, 8)], term=TERM)
    assert [e.id for e in store.events(after_id=2, limit=3)] == [3, 4, 5]
    assert [e.id for e in store.events(after_id=5)] == [6, 7]
    assert store.events(after_id=7) == []


def test_the_latest_save_replaces_status_and_evidence(store: StateStore) -> None:
    store.save(STATUS, Evidence(), [event(1)], term=TERM)
    later = STATUS.model_copy(update={"phase": Phase.ROLLED_BACK, "weight": 0.0, "epoch": 3})
    store.save(later, Evidence(epoch=3), [], term=TERM)
    state = store.load()
    assert state is not None and state.status == later and state.evidence == Evidence(epoch=3)
    assert state.last_event_id == 1


def test_a_newer_claim_fences_the_older_writer_inside_its_save(store: StateStore) -> None:
    store.save(STATUS, Evidence(), [event(1)], term=TERM)
    takeover = store.claim("controller-b", T0 + 60)
    assert (takeover.term, takeover.previous_holder) == (TERM + 1, "test-controller")
    later = STATUS.model_copy(update={"stage_index": 3})
    with pytest.raises(FencedError, match=r"writer term 1 is superseded: controller-b holds it at term 2") as caught:
        store.save(later, Evidence(), [event(2)], term=TERM)
    assert isinstance(caught.value, StoreError)  # every caller of a store handles it as a store failure
    state = store.load()
    assert state is not None and state.status == STATUS and [e.id for e in store.events()] == [1]  # nothing landed
    store.save(later, Evidence(), [event(2)], term=takeover.term)
    assert [e.id for e in store.events()] == [1, 2]


def test_a_save_before_any_claim_is_refused(tmp_path: Path) -> None:
    for store in (MemoryStateStore(), SqliteStateStore(tmp_path / "r.db")):
        with pytest.raises(FencedError, match="nobody holds this store"):
            store.save(STATUS, Evidence(), [event(1)], term=1)


def test_an_event_id_with_other_content_is_an_error_not_a_silent_drop(store: StateStore) -> None:
    store.save(STATUS, Evidence(), [event(1)], term=TERM)
    later = STATUS.model_copy(update={"stage_index": 3})
    with pytest.raises(StoreError, match="event id 1 is already in the log with other content"):
        store.save(later, Evidence(), [event(1, action="rollback"), event(2)], term=TERM)
    state = store.load()
    assert state is not None and state.status == STATUS and store.events() == [event(1)]


# --- the in-memory fake's outage switch ----------------------------------------------------------


def test_memory_store_outage_raises_store_error_and_keeps_nothing() -> None:
    store = claimed(MemoryStateStore())
    store.outage = "No space left on device"
    with pytest.raises(StoreError, match="No space left on device") as caught:
        store.save(STATUS, Evidence(), [event(1)], term=TERM)
    assert caught.value.path == "(memory)" and isinstance(caught.value.cause, OSError)
    store.outage = None
    assert store.load() is None and store.events() == []


# --- SQLite only ---------------------------------------------------------------------------------


def test_sqlite_uses_wal_on_a_local_disk_and_records_its_schema_version(tmp_path: Path) -> None:
    assert SqliteStateStore(tmp_path / "r.db").journal_mode == "wal"  # tmp_path is a local filesystem
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_sqlite_state_survives_a_new_store_object_on_the_same_file(tmp_path: Path) -> None:
    claimed(SqliteStateStore(tmp_path / "r.db")).save(STATUS, evidence_with_data(), [event(1)], term=TERM)
    state = SqliteStateStore(tmp_path / "r.db").load()
    assert state is not None and state.status == STATUS and state.last_event_id == 1


def test_sqlite_refuses_a_file_of_another_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SqliteStateStore(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match=r"schema version \[99\] on disk, this code reads version 4") as caught:
        SqliteStateStore(path)
    assert caught.value.path == str(path)


def test_a_version_1_file_is_migrated_to_fractions_when_opened(tmp_path: Path) -> None:
    """Version 1 stored weights as percents; the rollout continues at the same share."""
    path = tmp_path / "r.db"
    claimed(SqliteStateStore(path)).save(STATUS, Evidence(), [event(1)], term=TERM)
    old = STATUS.model_dump(mode="json")
    old["weight_percent"] = old.pop("weight") * 100
    old["intents"]["manual_weight_percent"] = old["intents"].pop("manual_weight") * 100
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET status = ?", (json.dumps(old),))
        db.execute("UPDATE schema_version SET version = 1")
    state = SqliteStateStore(path).load()
    assert state is not None and state.status == STATUS and state.last_event_id == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(path)) as caught:
        SqliteStateStore(path)
    assert isinstance(caught.value.cause, sqlite3.DatabaseError)


def test_a_failed_save_leaves_the_previous_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = claimed(SqliteStateStore(path))
    store.save(STATUS, Evidence(), [event(1)], term=TERM)
    with sqlite3.connect(path) as db:  # make the event insert fail after the state row was written
        db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.action = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'disk said no'); END"
        )
    later = STATUS.model_copy(update={"stage_index": 3, "weight": 25.0, "epoch": 3})
    with pytest.raises(StoreError, match="save failed: IntegrityError: disk said no"):
        store.save(later, Evidence(epoch=3), [event(2), event(3, action="boom")], term=TERM)
    state = store.load()
    assert state is not None and state.status == STATUS and state.last_event_id == 1  # all or nothing
    assert [e.id for e in store.events()] == [1]


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda d: d.rename(d.with_name("moved")), id="directory-moved"),
        pytest.param(lambda d: [p.unlink() for p in d.iterdir()], id="file-deleted"),
    ],
)
def test_an_unreachable_file_raises_store_error_with_path_and_cause(
    tmp_path: Path, break_it: Callable[[Path], object]
) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    store = claimed(SqliteStateStore(folder / "r.db"))
    store.save(STATUS, Evidence(), [event(1)], term=TERM)
    break_it(folder)
    with pytest.raises(StoreError) as caught:
        store.save(STATUS, Evidence(), [event(2)], term=TERM)
    message = str(caught.value)
    assert message.startswith(f"state store {folder / 'r.db'}: save failed: OperationalError")
    assert isinstance(caught.value.cause, sqlite3.OperationalError)
    assert not (folder / "r.db").exists()  # never silently recreated


def test_two_store_objects_on_one_file_have_one_writer(tmp_path: Path) -> None:
    """Two controllers' stores on one file (a RayService upgrade): the later claim wins."""
    old, new = claimed(SqliteStateStore(tmp_path / "r.db")), SqliteStateStore(tmp_path / "r.db")
    old.save(STATUS, Evidence(), [event(1)], term=TERM)
    term = new.claim("controller-b", T0 + 1).term
    with pytest.raises(FencedError):
        old.save(STATUS, Evidence(), [event(2)], term=TERM)
    new.save(STATUS, Evidence(), [event(2)], term=term)
    assert [e.id for e in old.events()] == [1, 2]


def test_a_version_2_file_gains_the_writer_table_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    claimed(SqliteStateStore(path)).save(STATUS, Evidence(), [event(1)], term=TERM)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE writer")
        db.execute("UPDATE schema_version SET version = 2")
    store = SqliteStateStore(path)
    assert store.claim("after-upgrade", T0).term == 1 and store.load() is not None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/state rw,relatime shared:20 - nfs4 10.0.0.2:/export rw,vers=4.1
41 22 0:36 / /mnt/bucket rw,nosuid shared:21 - fuse.gcsfuse bucket rw
42 40 0:37 / /mnt/state/local rw shared:22 - tmpfs tmpfs rw
43 22 0:38 / /mnt/my\\040disk rw shared:23 - xfs /dev/sdb rw
"""


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("/var/lib/kdcanary/rollout.db", "wal"),
        ("/mnt/state/rollout.db", "delete"),
        ("/mnt/state/local/rollout.db", "wal"),  # the longest mount point decides
        ("/mnt/statefoo/rollout.db", "wal"),  # a prefix of a name is not a parent folder
        ("/mnt/bucket/rollout.db", "delete"),
        ("/mnt/my disk/rollout.db", "wal"),
    ],
)
def test_the_journal_mode_follows_the_filesystem(path: str, mode: str) -> None:
    assert journal_mode_for(Path(path), MOUNTINFO) == mode


def test_the_rollback_journal_replaces_wal_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    claimed(SqliteStateStore(path)).save(STATUS, Evidence(), [event(1)], term=TERM)  # a WAL file
    store = SqliteStateStore(path, journal_mode="delete")
    store.save(STATUS, Evidence(), [event(2)], term=TERM)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not path.with_name("r.db-wal").exists() and [e.id for e in store.events()] == [1, 2]
