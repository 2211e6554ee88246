"""The embedded SQLite store: generation rule, status read-modify-write, migrations,
the version key, the apply lock, history trimming."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from reconciler.secret import keyed_version
from reconciler.stores import local as local_mod
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusWrite,
    StoredObject,
    StoreError,
    TestMemo,
    TestRecord,
)
from reconciler.stores.local import LocalStore, LockTimeout


def doc(name: str, port: int = 587, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, **meta},
            "spec": {"host": "relay.test", "port": port, "authentication": "None"}}


def test_generation_bumps_only_on_spec_change(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        (u,) = store.upsert_many([doc("a")])
        assert u.change == "created" and u.obj.generation == 1 and u.obj.created_at
        (u,) = store.upsert_many([doc("a")])
        assert u.change == "unchanged" and u.obj.generation == 1
        (u,) = store.upsert_many([doc("a", labels={"team": "x"})])
        assert u.change == "metadata" and u.obj.generation == 1
        (u,) = store.upsert_many([doc("a", port=2525, labels={"team": "x"})])
        assert u.change == "configured" and u.obj.generation == 2
        created = u.obj.created_at
        # server-side fields in the input are ignored
        (u,) = store.upsert_many([doc("a", port=2525, labels={"team": "x"}, generation=99,
                                      creationTimestamp="1999-01-01T00:00:00Z")])
        assert u.obj.generation == 2 and u.obj.created_at == created


def test_update_status_is_read_modify_write(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        (u,) = store.upsert_many([doc("a")])
        ref = u.obj.ref
        memo = TestMemo("sha256:x", 1, 1.0, 2.0, True)

        def set_a(cur: StoredObject) -> StatusWrite:
            return StatusWrite({**cur.status, "a": 1}, memo)

        def set_b(cur: StoredObject) -> StatusWrite:
            return StatusWrite({**cur.status, "b": 2}, cur.memo)

        asyncio.run(store.update_status(ref, set_a))
        out = asyncio.run(store.update_status(ref, set_b))
        assert out is not None and out.status == {"a": 1, "b": 2} and out.memo == memo
        again = store.get_sync(ref)
        assert again is not None and again.status == {"a": 1, "b": 2} and again.memo == memo
        assert int(again.version) > int(u.obj.version)
        # a mutator that returns None writes nothing
        v = again.version
        asyncio.run(store.update_status(ref, lambda cur: None))
        assert store.get_sync(ref).version == v  # type: ignore[union-attr]
        # a missing object
        assert asyncio.run(store.update_status(ObjectRef("ExternalSmtp", "default", "zz"),
                                               set_a)) is None
        # an exception in the mutator rolls back
        def boom(cur: StoredObject) -> StatusWrite:
            raise RuntimeError("x")
        with pytest.raises(RuntimeError):
            asyncio.run(store.update_status(ref, boom))
        assert store.get_sync(ref).status == {"a": 1, "b": 2}  # type: ignore[union-attr]


def test_version_key_is_private_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "s"
    with LocalStore(state):
        v1 = keyed_version("value")
    mode = stat.S_IMODE(os.stat(state / "version.key").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    with LocalStore(state):
        assert keyed_version("value") == v1
    with LocalStore(tmp_path / "other"):
        assert keyed_version("value") != v1


def test_migrations_are_versioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "s"
    with LocalStore(state) as store:
        store.upsert_many([doc("a")])
    db = sqlite3.connect(state / "state.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == local_mod.SCHEMA_VERSION
    db.close()
    # a later release adds a migration: opening the old store applies it, data survives
    monkeypatch.setattr(local_mod, "MIGRATIONS",
                        [*local_mod.MIGRATIONS, "ALTER TABLE resources ADD COLUMN note TEXT"])
    monkeypatch.setattr(local_mod, "SCHEMA_VERSION", local_mod.SCHEMA_VERSION + 1)
    with LocalStore(state) as store:
        assert store.get_sync(ObjectRef("ExternalSmtp", "default", "a")) is not None
    db = sqlite3.connect(state / "state.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == local_mod.SCHEMA_VERSION
    db.close()
    # an older release refuses a newer store with a clear message
    monkeypatch.setattr(local_mod, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(local_mod, "MIGRATIONS", local_mod.MIGRATIONS[:1])
    with pytest.raises(StoreError, match="newer than this smtpctl"):
        LocalStore(state)


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    a = LocalStore(tmp_path / "s")
    b = LocalStore(tmp_path / "s")
    try:
        a.lock(0)
        with pytest.raises(LockTimeout, match="another smtpctl apply"):
            b.lock(0.1)
        a.unlock()
        b.lock(0)
    finally:
        a.close()
        b.close()


def test_missing_state_is_an_error_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no state directory"):
        LocalStore(tmp_path / "nope", create=False)


def test_history_is_trimmed_and_delete_cascades(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        (u,) = store.upsert_many([doc("a")])
        ref = u.obj.ref
        for i in range(local_mod.HISTORY_KEEP + 5):
            asyncio.run(store.record_test(TestRecord(ref, 1, f"t{i}", True, "quit", "TestPassed",
                                                     "ok", 0.1, "d")))
            asyncio.run(store.record_event(Event(ref, "Normal", "TestPassed", "m", f"t{i}")))
        tests = store.tests_sync(ref, limit=100)
        last = f"t{local_mod.HISTORY_KEEP + 4}"
        assert len(tests) == local_mod.HISTORY_KEEP and tests[0]["at"] == last
        assert store.events_sync(ref)[-1].at == last
        assert store.delete_sync(ref) and not store.delete_sync(ref)
        assert store.tests_sync(ref) == [] and store.get_sync(ref) is None


def test_damaged_database_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot be used .*file is not a database.* damaged"):
        LocalStore(state)
