"""Units of one statement in a group commit (``LocalStore._tx(one_statement=True)``).

A status write (reads, then one UPDATE) and an event that does not trim (one INSERT) take
no savepoint of their own inside ``LocalStore.batched``: SQLite undoes a failed statement
by itself.  What the savepoint guaranteed must still hold: a unit that fails is undone
alone - the units before it (also of the same row) and after it commit - and a failure
changes nothing that another connection can see.  Behaviour only, never a time.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reconciler.stores.base import Event, ObjectRef, StatusWrite, StoredObject, StoreError
from reconciler.stores.local import EVENTS_TRIM_EVERY, LocalStore
from tests.support.store_rows import committed
from tests.support.store_rows import manifest as _manifest
from tests.support.store_rows import set_status as _set

A = ObjectRef("ExternalSmtp", "default", "a")
B = ObjectRef("ExternalSmtp", "default", "b")



def _status(state: Path, name: str) -> dict[str, Any]:
    [(text,)] = committed(state, "SELECT status FROM resources WHERE name=?", name)
    return dict(json.loads(text))


def _refuse(store: LocalStore) -> None:
    store._db.executescript(
        "CREATE TEMP TRIGGER refuse_status BEFORE UPDATE OF status ON resources "
        "WHEN NEW.status LIKE '%refused%' BEGIN SELECT RAISE(ABORT, 'refused'); END;"
        "CREATE TEMP TRIGGER refuse_event BEFORE INSERT ON events "
        "WHEN NEW.message LIKE '%refused%' BEGIN SELECT RAISE(ABORT, 'refused'); END;")


def test_a_failed_status_write_keeps_the_earlier_write_of_the_same_row(tmp_path: Path) -> None:
    """Without a savepoint, the failed UPDATE is undone by SQLite alone: the same row's
    earlier write in the batch is kept (not rolled back with it), the row's version is the
    earlier write's, and later writes of the row commit on top of it."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        _refuse(store)
        with store.remember(), store.batched(max_delay=3600):
            first = store.update_status_sync(A, _set("n", 1))
            assert first is not None
            with pytest.raises(StoreError):
                store.update_status_sync(A, _set("x", "refused"))
            now = store.get_sync(A)
            assert now is not None and now.status == {"n": 1}
            assert now.version == first.version
            again = store.update_status_sync(A, _set("m", 2))
            assert again is not None and again.status == {"n": 1, "m": 2}
        assert _status(tmp_path / "s", "a") == {"n": 1, "m": 2}


def test_a_failed_event_is_undone_alone(tmp_path: Path) -> None:
    """An event whose INSERT fails inside a batch: the units before and after it (a status
    write, other events) commit; the refused event is nowhere."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        _refuse(store)
        with store.batched(max_delay=3600):
            store.record_event_sync(Event(A, "Normal", "TestPassed", "before", "t"))
            store.update_status_sync(B, _set("n", 1))
            with pytest.raises(StoreError):
                store.record_event_sync(Event(A, "Warning", "X", "refused", "t"))
            store.record_event_sync(Event(A, "Normal", "TestPassed", "after", "t"))
        rows = committed(tmp_path / "s", "SELECT message FROM events ORDER BY id")
        assert rows == [("before",), ("after",)]
        assert _status(tmp_path / "s", "b") == {"n": 1}
        assert [e.message for e in store.events_sync(A)] == ["before", "after"]


def test_a_status_write_whose_mutator_raises_writes_nothing(tmp_path: Path) -> None:
    def boom(cur: StoredObject) -> StatusWrite:
        raise RuntimeError("a mutator bug")

    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        with store.remember(), store.batched(max_delay=3600):
            store.update_status_sync(A, _set("n", 1))
            with pytest.raises(RuntimeError):
                store.update_status_sync(A, boom)
            store.record_event_sync(Event(A, "Normal", "TestPassed", "after", "t"))
        assert _status(tmp_path / "s", "a") == {"n": 1}
        assert [e.message for e in store.events_sync(A)] == ["after"]


def test_a_trimming_event_whose_trim_fails_is_undone_whole(tmp_path: Path) -> None:
    """The event that trims writes two statements (its INSERT, then the trim's DELETEs)
    and so keeps its savepoint: when the trim fails after the INSERT succeeded, the INSERT
    is undone with it (a unit is all or nothing), and the units around it commit."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        store._db.execute(
            "CREATE TEMP TRIGGER refuse_trim BEFORE DELETE ON events "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with store.batched(max_delay=3600):
            for i in range(EVENTS_TRIM_EVERY - 1):
                store.record_event_sync(Event(A, "Normal", "TestPassed", f"e{i}", "t"))
            with pytest.raises(StoreError):  # the 64th trims: its DELETE is refused
                store.record_event_sync(Event(A, "Warning", "X", "trimming", "t"))
            store.update_status_sync(B, _set("n", 1))
        rows = committed(tmp_path / "s", "SELECT message FROM events ORDER BY id")
        assert [m for (m,) in rows] == [f"e{i}" for i in range(EVENTS_TRIM_EVERY - 1)]
        assert _status(tmp_path / "s", "b") == {"n": 1}


def _other_process_writes(state: Path, sql: str, *args: Any) -> None:
    db = sqlite3.connect(state / "state.db")
    try:
        db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def test_a_status_write_mutates_the_row_as_stored_when_another_process_changed_it(
        tmp_path: Path) -> None:
    """Inside ``remember()`` a status write mutates the object the store remembers and
    writes it only if the row still has that version; when another process changed the
    row meanwhile, the mutator runs again on the row as stored (its change is kept, not
    overwritten with the remembered status), and a row deleted meanwhile is not written."""
    seen: list[dict[str, Any]] = []

    def add_m(cur: StoredObject) -> StatusWrite:
        seen.append(dict(cur.status))
        return StatusWrite(status={**cur.status, "m": 2}, memo=cur.memo)

    state = tmp_path / "s"
    with LocalStore(state) as store, store.remember():
        store.upsert_many([_manifest("a"), _manifest("b")])
        first = store.update_status_sync(A, _set("n", 1))
        assert first is not None
        _other_process_writes(state, "UPDATE resources SET status=?, version=version+1 "
                                     "WHERE name='a'", json.dumps({"other": 1}))
        written = store.update_status_sync(A, add_m)
        assert written is not None and written.status == {"other": 1, "m": 2}
        assert seen[-1] == {"other": 1}  # the last call saw the row as stored
        assert int(written.version) == int(first.version) + 2
        assert _status(state, "a") == {"other": 1, "m": 2}
        # unchanged since: one call, on the remembered object
        seen.clear()
        again = store.update_status_sync(A, _set("k", 3))
        assert again is not None and again.status == {"other": 1, "m": 2, "k": 3}
        # deleted by another process: nothing written, None
        store.update_status_sync(B, _set("n", 1))
        _other_process_writes(state, "DELETE FROM resources WHERE name='b'")
        assert store.update_status_sync(B, _set("x", 1)) is None
        assert committed(state, "SELECT name FROM resources ORDER BY name") == [("a",)]
