"""LocalStore keeps the newest ``EVENTS_KEEP`` events of each resource.

The trim runs every ``EVENTS_TRIM_EVERY`` recorded events and covers the resources those
events name (one index range each), not a window over the whole events table: that scan
grew with the table and made a first apply of 10,000 resources quadratic
(docs/benchmarks/fleet.md, Round 7).  Which events survive is what it always was.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.stores import local as local_mod
from reconciler.stores.base import Event, ObjectRef, StoreError
from reconciler.stores.local import LocalStore
from tests.support.store_faults import FailingCommit


def _doc(name: str) -> dict[str, object]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name},
            "spec": {"host": "relay.test", "port": 587, "authentication": "None"}}


def _ats(store: LocalStore, ref: ObjectRef) -> list[str]:
    return [e.at for e in store.events_sync(ref, limit=10_000)]


def test_each_resource_keeps_its_newest_events(tmp_path: Path) -> None:
    keep, every = local_mod.EVENTS_KEEP, local_mod.EVENTS_TRIM_EVERY
    with LocalStore(tmp_path / "s") as store:
        refs = [u.obj.ref for u in store.upsert_many([_doc("a"), _doc("b"), _doc("c")])]
        quiet = refs[2]
        for i in range(keep + 5):  # c: more than it may keep, then never named again
            store.record_event_sync(Event(quiet, "Normal", "X", "m", f"c{i:04d}"))
        # a and b in turn, until a trim point (every `every` events) names both
        total = keep + 5
        i = 0
        while i < 2 * keep + 20 or (total + i) % every:
            ref = refs[i % 2]
            store.record_event_sync(Event(ref, "Normal", "X", "m", f"{ref.name}{i:04d}"))
            i += 1
        for ref in refs[:2]:
            ats = _ats(store, ref)
            mine = sorted(f"{ref.name}{j:04d}" for j in range(i) if refs[j % 2] == ref)
            assert ats == mine[-keep:], ref  # the newest, oldest first
    # c was trimmed at the first trim point after its events (it was named before it)
    with LocalStore(tmp_path / "s") as store:
        assert _ats(store, quiet) == [f"c{j:04d}" for j in range(keep + 5)][-keep:]


def test_a_resource_is_trimmed_again_when_a_later_run_names_it(tmp_path: Path) -> None:
    keep, every = local_mod.EVENTS_KEEP, local_mod.EVENTS_TRIM_EVERY
    state = tmp_path / "s"
    with LocalStore(state) as store:
        (u,) = store.upsert_many([_doc("a")])
        ref = u.obj.ref
    # events written by something that never trimmed (an older smtpctl, a crash)
    db = sqlite3.connect(state / local_mod.DB_NAME)
    db.executemany("INSERT INTO events (kind, namespace, name, at, type, reason, message) "
                   "VALUES (?,?,?,?,?,?,?)",
                   [(ref.kind, ref.namespace, ref.name, f"old{j:04d}", "Normal", "X", "m")
                    for j in range(3 * keep)])
    db.commit()
    db.close()
    with LocalStore(state) as store:
        for j in range(every):
            store.record_event_sync(Event(ref, "Normal", "X", "m", f"new{j:04d}"))
        ats = _ats(store, ref)
    assert ats == [f"new{j:04d}" for j in range(every)][-keep:]  # every old one gone


def _count(state: Path, name: str) -> int:
    db = sqlite3.connect(state / local_mod.DB_NAME)
    try:
        (n,) = db.execute("SELECT count(*) FROM events WHERE name=?", (name,)).fetchone()
    finally:
        db.close()
    return int(n)


def test_a_trim_that_rolled_back_is_done_at_the_next_trim(tmp_path: Path) -> None:
    # The trim's transaction failed (here a trigger refuses the DELETE, as a full disk
    # would): its resources must stay to be trimmed.  Before the fix the set of resources
    # to trim was emptied inside the failed write, so `a` kept more than EVENTS_KEEP events
    # until it was named again.
    keep, every = local_mod.EVENTS_KEEP, local_mod.EVENTS_TRIM_EVERY
    state = tmp_path / "s"
    with LocalStore(state) as store:
        a, b = (u.obj.ref for u in store.upsert_many([_doc("a"), _doc("b")]))
        for j in range(every - 1):
            store.record_event_sync(Event(a, "Normal", "X", "m", f"a{j:04d}"))
        store._db.execute("CREATE TEMP TRIGGER refuse BEFORE DELETE ON events "
                          "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        with pytest.raises(StoreError):
            store.record_event_sync(Event(a, "Normal", "X", "m", "a-lost"))
        store._db.execute("DROP TRIGGER refuse")
        assert _count(state, "a") == every - 1  # the failed unit wrote nothing
        store.record_event_sync(Event(b, "Normal", "X", "m", "b0000"))  # the next trim
        assert _count(state, "a") == keep
        assert _ats(store, a) == [f"a{j:04d}" for j in range(every - 1)][-keep:]


def test_a_trim_lost_with_a_failed_group_commit_is_done_later(tmp_path: Path) -> None:
    # Inside a group commit the trim is durable only at the batch's COMMIT: when that
    # fails, the resources it trimmed must be trimmed again later (before the fix they
    # were forgotten once the unit ran).
    keep, every = local_mod.EVENTS_KEEP, local_mod.EVENTS_TRIM_EVERY
    state = tmp_path / "s"
    with LocalStore(state) as store:
        a, b = (u.obj.ref for u in store.upsert_many([_doc("a"), _doc("b")]))
        for j in range(every - 1):  # committed one by one
            store.record_event_sync(Event(a, "Normal", "X", "m", f"a{j:04d}"))
        real = store._db
        with pytest.raises(StoreError), store.batched(max_delay=3600, max_units=1000):
            store.record_event_sync(Event(a, "Normal", "X", "m", "a-lost"))  # trims a
            store._db = FailingCommit(real)  # type: ignore[assignment]
            store.flush()
        store._db = real
        assert _count(state, "a") == every - 1  # the batch (its event, its trim) is lost
        for j in range(every):  # b only, up to the next trim point
            store.record_event_sync(Event(b, "Normal", "X", "m", f"b{j:04d}"))
        assert _count(state, "a") == keep
        assert _count(state, "b") == keep
