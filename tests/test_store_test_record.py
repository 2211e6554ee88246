"""A test record is one statement (``LocalStore.record_test_sync``, issue 15).

The history trim (the ``HISTORY_KEEP`` newest records of a resource stay) is done by a
TEMP trigger inside the record's INSERT, so inside a group commit a record takes no
savepoint of its own: one statement instead of SAVEPOINT, INSERT, DELETE, RELEASE.  What
the savepoint guaranteed must still hold - a record that fails (its trim included) is
undone alone, the units around it commit - and the trigger lives in the connection only:
the file's schema, which other versions of smtpctl open, is unchanged.  Counts and
contents only, never a time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from reconciler.stores import local as local_mod
from reconciler.stores.base import ObjectRef, StoreError, TestRecord
from reconciler.stores.local import HISTORY_KEEP, LocalStore
from tests.support.store_rows import CountingConnection, committed
from tests.support.store_rows import manifest as _manifest
from tests.support.store_rows import set_status as _set

A = ObjectRef("ExternalSmtp", "default", "a")
B = ObjectRef("ExternalSmtp", "default", "b")


def _record(ref: ObjectRef, at: str) -> TestRecord:
    return TestRecord(ref, 1, at, True, "quit", "TestPassed", "ok", 0.1, "d")


def test_a_record_in_a_group_commit_is_one_statement(tmp_path: Path) -> None:
    """Inside ``batched()`` each record is its INSERT and nothing else, also once the
    history is full (it was SAVEPOINT, INSERT, DELETE, RELEASE: four)."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        with store.batched(max_delay=3600, max_units=10_000):
            store.record_test_sync(_record(A, "t-first"))  # opens the transaction
            counting = CountingConnection(store._db)
            store._db = counting  # type: ignore[assignment]
            try:
                for i in range(3 * HISTORY_KEEP):
                    store.record_test_sync(_record(A, f"t{i}"))
            finally:
                store._db = counting.db
        assert counting.seen == Counter({"INSERT": 3 * HISTORY_KEEP}), counting.seen
        assert len(store.tests_sync(A, limit=100)) == HISTORY_KEEP


def test_the_history_keeps_the_newest_records_of_each_resource(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        with store.batched(max_delay=3600):
            for i in range(HISTORY_KEEP + 7):
                store.record_test_sync(_record(A, f"a{i}"))
                if i < 3:
                    store.record_test_sync(_record(B, f"b{i}"))
        assert [t["at"] for t in store.tests_sync(A, limit=100)] == \
            [f"a{i}" for i in reversed(range(7, HISTORY_KEEP + 7))]
        assert [t["at"] for t in store.tests_sync(B, limit=100)] == ["b2", "b1", "b0"]
        rows = committed(tmp_path / "s", "SELECT name, COUNT(*) FROM tests GROUP BY name")
        assert sorted(rows) == [("a", HISTORY_KEEP), ("b", 3)]


def test_a_record_whose_trim_fails_is_undone_alone(tmp_path: Path) -> None:
    """A record whose trim (the trigger's DELETE) fails: the INSERT is undone with it,
    the history keeps what it had, and the units before and after it commit."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        with store.batched(max_delay=3600):
            for i in range(HISTORY_KEEP):
                store.record_test_sync(_record(A, f"a{i}"))
            store.update_status_sync(B, _set("n", 1))
            store._db.execute(
                "CREATE TEMP TRIGGER refuse_trim BEFORE DELETE ON main.tests "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END")
            with pytest.raises(StoreError):  # the eleventh trims: refused
                store.record_test_sync(_record(A, "refused"))
            store._db.execute("DROP TRIGGER temp.refuse_trim")
            store.update_status_sync(B, _set("m", 2))
        rows = committed(tmp_path / "s", "SELECT at FROM tests ORDER BY id")
        assert [at for (at,) in rows] == [f"a{i}" for i in range(HISTORY_KEEP)]
        [(status,)] = committed(tmp_path / "s", "SELECT status FROM resources WHERE name='b'")
        assert status == '{"m":2,"n":1}'


def test_a_record_that_cannot_be_encoded_writes_nothing(tmp_path: Path) -> None:
    class Odd:
        pass

    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        with store.batched(max_delay=3600):
            store.record_test_sync(_record(A, "before"))
            bad = TestRecord(A, 1, "bad", True, "quit", "TestPassed", "ok", 0.1, "d",
                             details={"x": Odd()})
            with pytest.raises(TypeError):
                store.record_test_sync(bad)
            store.record_test_sync(_record(A, "after"))
        assert [t["at"] for t in store.tests_sync(A)] == ["after", "before"]


def test_the_files_schema_is_unchanged(tmp_path: Path) -> None:
    """The trigger is the connection's (TEMP): the file holds no trigger, so a store
    written by this version opens in an earlier one exactly as before; a second
    connection (another process) trims through its own trigger."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        store.record_test_sync(_record(A, "t"))
        assert store._db.execute(
            "SELECT name FROM sqlite_temp_master WHERE type='trigger'").fetchall() == \
            [("smtpctl_tests_trim",)]
    assert committed(tmp_path / "s", "SELECT name FROM sqlite_master WHERE type='trigger'") \
        == []
    assert committed(tmp_path / "s", "PRAGMA user_version") == \
        [(local_mod.SCHEMA_VERSION,)]
    with LocalStore(tmp_path / "s") as again:
        for i in range(HISTORY_KEEP + 2):
            again.record_test_sync(_record(A, f"u{i}"))
        assert len(again.tests_sync(A, limit=100)) == HISTORY_KEEP
