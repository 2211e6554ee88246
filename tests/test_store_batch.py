"""Group commit of the local store (``LocalStore.batched``): fewer write transactions,
the same crash safety.

What is asserted is behaviour, through the store's own counter of committed write
transactions and through a second connection (another process's view): never a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.world import Limits
from reconciler.runtimes.local import apply_manifests, build_world
from reconciler.stores.base import Event, ObjectRef, StatusWrite, StoredObject, StoreError
from reconciler.stores.local import LocalStore
from tests.support.engine_env import Env, cond, e2e_fixture  # noqa: F401
from tests.support.store_faults import FailingCommit
from tests.support.store_rows import manifest as _manifest
from tests.support.store_rows import set_status as _set

REF = ObjectRef("ExternalSmtp", "default", "a")



def _committed_status(state: Path, name: str = "a") -> dict[str, Any]:
    """The status as another process sees it: committed rows only."""
    import json

    db = sqlite3.connect(state / "state.db")
    try:
        row = db.execute("SELECT status FROM resources WHERE name=?", (name,)).fetchone()
    finally:
        db.close()
    return dict(json.loads(row[0])) if row else {}


def _event(i: int) -> Event:
    return Event(REF, "Normal", "TestPassed", f"event {i}", "2026-01-01T00:00:00Z")


def test_units_of_a_batch_share_one_transaction(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        before = store.write_transactions
        with store.batched(max_delay=3600, max_units=1000):
            for i in range(5):
                store.update_status_sync(REF, _set("n", i))
            # this connection reads its own writes; another one sees none of them yet
            obj = store.get_sync(REF)
            assert obj is not None and obj.status["n"] == 4
            assert "n" not in _committed_status(tmp_path / "s")
            assert store.write_transactions == before
        assert store.write_transactions == before + 1
        assert _committed_status(tmp_path / "s")["n"] == 4


def test_a_batch_commits_every_max_units_and_on_flush(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        before = store.write_transactions
        with store.batched(max_delay=3600, max_units=3):
            for i in range(7):
                store.update_status_sync(REF, _set("n", i))
            assert store.write_transactions == before + 2  # after units 3 and 6
            assert _committed_status(tmp_path / "s")["n"] == 5
            store.flush()
            assert _committed_status(tmp_path / "s")["n"] == 6
            assert store.write_transactions == before + 3
        assert store.write_transactions == before + 3  # nothing was left open


def test_an_idle_batch_commits_when_its_delay_is_over(tmp_path: Path) -> None:
    async def run(store: LocalStore) -> None:
        with store.batched(max_delay=0.0, max_units=1000):
            store.update_status_sync(REF, _set("n", 1))
            # the write is committed by the batch's timer, with no further write and
            # while the block is still open (a loop tick: call_later(0))
            for _ in range(3):
                if _committed_status(tmp_path / "s").get("n") == 1:
                    break
                await asyncio.sleep(0)
            assert _committed_status(tmp_path / "s").get("n") == 1

    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        asyncio.run(run(store))


def test_a_unit_that_raises_is_undone_alone(tmp_path: Path) -> None:
    def boom(cur: StoredObject) -> StatusWrite:
        raise RuntimeError("a mutator bug")

    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        b = ObjectRef("ExternalSmtp", "default", "b")
        with store.batched(max_delay=3600):
            store.update_status_sync(REF, _set("n", 1))
            with pytest.raises(RuntimeError):
                store.update_status_sync(b, boom)
            store.update_status_sync(b, _set("m", 2))
        assert _committed_status(tmp_path / "s")["n"] == 1
        assert _committed_status(tmp_path / "s", "b") == {"m": 2}


def test_a_status_write_whose_update_fails_is_undone_alone(tmp_path: Path) -> None:
    """A status write whose UPDATE fails inside a batch is undone alone: the units before
    and after it commit, the object keeps its version, and the store hands out what is
    stored (not the refused status)."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        b = ObjectRef("ExternalSmtp", "default", "b")
        store._db.execute(
            "CREATE TEMP TRIGGER refuse BEFORE UPDATE OF status ON resources "
            "WHEN NEW.status LIKE '%refused%' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with store.remember(), store.batched(max_delay=3600):
            store.update_status_sync(REF, _set("n", 1))
            before = store.get_sync(b)
            with pytest.raises(StoreError):
                store.update_status_sync(b, _set("x", "refused"))
            after = store.get_sync(b)
            assert after is not None and before is not None
            assert after.version == before.version and after.status == {}
            written = store.update_status_sync(b, _set("m", 2))
            assert written is not None and written.status == {"m": 2}
        assert _committed_status(tmp_path / "s")["n"] == 1
        assert _committed_status(tmp_path / "s", "b") == {"m": 2}


def test_after_a_failed_commit_nothing_later_commits(tmp_path: Path) -> None:
    # A test record lost with a failed commit must not be followed by a committed status
    # that claims its result: every later unit of the block fails, and so does the block.
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        real = store._db
        with pytest.raises(StoreError, match="cannot be used"), \
                store.batched(max_delay=3600, max_units=2):
            store._db = FailingCommit(real)  # type: ignore[assignment]
            store.update_status_sync(REF, _set("n", 1))
            with pytest.raises(StoreError):
                store.update_status_sync(REF, _set("n", 2))  # its commit fails
            with pytest.raises(StoreError):
                store.update_status_sync(REF, _set("n", 3))  # refused: after the failure
        store._db = real
        assert "n" not in _committed_status(tmp_path / "s")
        # the store is usable again after the block
        store.update_status_sync(REF, _set("n", 4))
        assert _committed_status(tmp_path / "s")["n"] == 4


class _AbortingUpdate:
    """A connection whose next status UPDATE fails the way SQLite fails a statement on a
    full disk or an I/O error: it rolls the whole open transaction back on its own."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.fail = True

    def execute(self, sql: str, *args: Any) -> Any:
        if self.fail and sql.startswith("UPDATE resources SET status"):
            self.fail = False
            self._db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_unit_whose_error_rolled_the_batch_back_lets_nothing_later_commit(
        tmp_path: Path) -> None:
    # The units before it in the batch are gone with SQLite's own rollback: a later unit
    # committed after them would leave a state that is not a prefix of the units (a status
    # without the test record before it).  Every later unit fails, and so does the block.
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        b = ObjectRef("ExternalSmtp", "default", "b")
        real = store._db
        with pytest.raises(StoreError, match="cannot be used"), \
                store.batched(max_delay=3600):
            store.update_status_sync(REF, _set("n", 1))  # lost with the rollback
            store._db = _AbortingUpdate(real)  # type: ignore[assignment]
            with pytest.raises(StoreError):
                store.update_status_sync(b, _set("m", 1))
            with pytest.raises(StoreError):
                store.update_status_sync(b, _set("m", 2))  # refused: after the failure
        store._db = real
        assert _committed_status(tmp_path / "s") == {}
        assert _committed_status(tmp_path / "s", "b") == {}
        store.update_status_sync(REF, _set("n", 4))  # usable again after the block
        assert _committed_status(tmp_path / "s")["n"] == 4


def test_unlock_and_close_commit_what_is_open(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.upsert_many([_manifest("a")])
    store.lock(5)
    with store.batched(max_delay=3600):
        store.update_status_sync(REF, _set("n", 1))
        store.unlock()  # a watch pass ends: the next apply must see everything
        assert _committed_status(tmp_path / "s")["n"] == 1
        store.update_status_sync(REF, _set("n", 2))
        store.close()
        assert _committed_status(tmp_path / "s")["n"] == 2


def test_apply_commits_far_fewer_transactions_than_resources(e2e: Env) -> None:
    # Each tested relay writes 4-5 units (Reconciling, the test record, the status, an
    # event); without group commit that was ~5 transactions per relay.
    n = 30
    docs = [e2e.smtp(f"r{i:02d}", selected=i == 0) for i in range(n)]
    e2e.write("fleet.yaml", *docs)
    with LocalStore(e2e.state) as store:
        store.batch_max_delay = 3600  # commits by count only: a number, not a timing
        world = build_world(store, limits=Limits(8, 8))
        before = store.write_transactions
        out = asyncio.run(apply_manifests(store, world, docs))
        assert out.tests_run == n
        assert store.write_transactions - before <= 3  # upsert, one batch, the end
        for i in range(n):
            obj = store.get_sync(ObjectRef("ExternalSmtp", "default", f"r{i:02d}"))
            assert obj is not None and cond(obj.status, "Ready")["status"] == "True"
    assert sum(bool(e2e.status(f"r{i:02d}").get("selected")) for i in range(n)) == 1


def test_crash_points_inside_a_batch_leave_a_consistent_store(e2e: Env,
                                                              tmp_path: Path) -> None:
    """kill -9 at chosen units of a group commit (before its COMMIT) and right before a
    COMMIT: the store keeps the invariants of tests/test_crash.py every time."""
    import os
    import signal
    import subprocess
    import sys

    from tests.test_crash import _check_store

    n = 12
    docs = [e2e.smtp(f"r{i:02d}", selected=i % 5 == 0,
                     user="nobody@example.test" if i % 4 == 3 else "app@example.test")
            for i in range(n)]
    fleet = e2e.write("fleet.yaml", *docs)
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def run(where: str, k: int) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([sys.executable, str(script), str(fleet), str(e2e.state),
                               where, str(k)], env=env, capture_output=True, timeout=120,
                              check=False)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-2000:]
        return proc

    # An uninterrupted run counts its units and commits: how many units a pass writes
    # depends on the engine (announcements, events), so the crash points are chosen
    # within what this pass does, not fixed numbers.
    counted = run("count", 0)
    assert counted.returncode == 0
    units, commits = (int(x) for x in counted.stdout.decode().split())
    assert units >= 3 * n and commits >= 3, (units, commits)
    _check_store(e2e.state)
    killed = 0
    # units: the first ones, then some mid-batch (5 units a batch); commits: the first three
    points = [("unit", 1), ("unit", 2), ("unit", 7), ("unit", units // 2),
              ("unit", units - 3), ("commit", 1), ("commit", 2), ("commit", 3)]
    for where, k in points:
        proc = run(where, k)
        killed += proc.returncode == -signal.SIGKILL
        _check_store(e2e.state)
    assert killed == len(points), "a crash point was not reached"
    # an uninterrupted apply of a fleet without broken relays converges
    good = [e2e.smtp(f"r{i:02d}", selected=i % 5 == 0) for i in range(n)]
    with LocalStore(e2e.state) as store:
        asyncio.run(apply_manifests(store, build_world(store), good))
        objs = store.list_sync("ExternalSmtp")
    _check_store(e2e.state)
    assert len(objs) == n and all(cond(o.status, "Ready")["status"] == "True" for o in objs)
    assert sum(bool(o.status.get("selected")) for o in objs) == 1


CRASH_SCRIPT = '''
import asyncio, os, signal, sys
import yaml
from reconciler.runtimes.local import build_world, ref_of, reconcile_objects
from reconciler.stores import local

fleet, state, where, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
count = 0
units = commits = 0  # where == "count": printed at the end


class Crashing(local.LocalStore):
    def _unit(self, batch):
        unit = super()._unit(batch)
        store = self

        class Wrapped:
            def __enter__(self):
                return unit.__enter__()

            def __exit__(self, *exc):
                global count, units
                out = unit.__exit__(*exc)
                units += exc[0] is None
                if where != "unit":
                    return out
                count += 1
                if count == k and store._db.in_transaction:
                    os.kill(os.getpid(), signal.SIGKILL)  # after the unit, before COMMIT
                return out

        return Wrapped()

    def _commit_open(self, batch, quiet=False):
        global count, commits
        commits += self._db.in_transaction and batch.failed is None and not batch.ended
        if where == "commit" and self._db.in_transaction:
            count += 1
            if count == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return super()._commit_open(batch, quiet)


store = Crashing(state)
store.batch_max_delay = 3600
store.batch_max_units = 5  # many commits: crash points before each of the first ones
docs = list(yaml.safe_load_all(open(fleet)))
store.upsert_many(docs)
# force: every run tests every relay again (work to interrupt even when nothing changed)
asyncio.run(reconcile_objects([ref_of(d) for d in docs], build_world(store), force=True))
store.close()
if where == "count":
    print(units, commits)
'''
