"""``LocalStore.current_in`` without a scan while every remembered object is current.

Selection reads the relays written since its previous run with ``current_in``; the final
selection of a first apply asks for every relay the apply wrote, which scanned the whole
namespace (issue 15).  Inside ``remember()``, while no other connection has committed and
no write of this one was rolled back, each remembered object is exactly its row, so it is
handed back without reading one; otherwise the rows are read as before.  Were a foreign
or rolled-back write missed, selection could decide from a status that is not stored (two
selected relays, a relay selected on a verdict that was never committed).  Counts and
contents, never a time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.selection import select_scope
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject, StoreError
from reconciler.stores.local import LocalStore
from tests.support.store_faults import FailingCommit
from tests.support.store_rows import CountingConnection

KIND = "ExternalSmtp"


def _doc(name: str, selected: bool = False) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND,
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "h", "port": 25, "selected": selected}}


def _set(value: Any) -> Any:
    def mutate(cur: StoredObject) -> StatusWrite:
        return StatusWrite(status={**cur.status, "n": value}, memo=None)
    return mutate


def _ref(name: str) -> ObjectRef:
    return ObjectRef(KIND, "default", name)


def _other_process(state: Path, name: str, status: dict[str, Any]) -> None:
    other = sqlite3.connect(state / "state.db")
    with other:
        other.execute("UPDATE resources SET status=?, version=version+1 WHERE name=?",
                      (json.dumps(status), name))
    other.close()


def test_the_relays_a_pass_wrote_are_handed_back_without_a_scan(tmp_path: Path) -> None:
    """Every relay written inside remember(): one PRAGMA, no row read; the objects are
    the ones written, and a name never remembered (nor stored) is looked up alone."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc(f"r{i}") for i in range(40)])
        with store.remember(), store.batched(max_delay=3600):
            written = {f"r{i}": store.update_status_sync(_ref(f"r{i}"), _set(i))
                       for i in range(40)}
            counting = CountingConnection(store._db)
            store._db = counting  # type: ignore[assignment]
            try:
                got = store.current_in(KIND, "default", [*written, "gone"])
            finally:
                store._db = counting.db
        assert counting.seen == Counter({"PRAGMA": 1, "SELECT": 1}), counting.seen
        assert {n: o for n, o in got.items() if n != "gone"} == written
        assert all(got[n] is written[n] for n in written) and got["gone"] is None


def test_a_commit_by_another_connection_means_reading_the_rows(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("a"), _doc("b")])
        with store.remember():
            store.update_status_sync(_ref("a"), _set(1))
            store.update_status_sync(_ref("b"), _set(1))
            store.flush()
            _other_process(tmp_path / "s", "b", {"selected": True})
            got = store.current_in(KIND, "default", ["a", "b"])
            assert got["b"] is not None and got["b"].status == {"selected": True}
            assert got["a"] is not None and got["a"].status == {"n": 1}
            # ... and for the rest of the block: the objects remembered before it may be
            # stale (start over only with a new remember()).
            store.update_status_sync(_ref("a"), _set(2))
            _other_process(tmp_path / "s", "a", {"n": "theirs"})
            assert store.current_in(KIND, "default", ["a"])["a"].status == {"n": "theirs"}  # type: ignore[union-attr]


def test_a_rolled_back_write_is_never_handed_out(tmp_path: Path) -> None:
    """A group commit whose COMMIT fails: the status written in it is not stored, so
    current_in must not hand out the object remembered for it."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("a"), _doc("b")])
        real = store._db
        with store.remember():
            with pytest.raises(StoreError), store.batched(max_delay=3600, max_units=2):
                store.update_status_sync(_ref("a"), _set("lost"))  # written, remembered
                store._db = FailingCommit(real)  # type: ignore[assignment]
                store.update_status_sync(_ref("b"), _set("lost"))  # the commit fails
            store._db = real
            got = store.current_in(KIND, "default", ["a", "b"])
            assert got["a"] is not None and got["a"].status == {}
            assert got["b"] is not None and got["b"].status == {}
        assert store.get_sync(_ref("a")).status == {}  # type: ignore[union-attr]


def test_a_deleted_relay_is_gone(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("a"), _doc("b")])
        with store.remember():
            store.update_status_sync(_ref("a"), _set(1))
            store.delete_sync(_ref("a"))
            assert store.current_in(KIND, "default", ["a", "b"]) == {
                "a": None, "b": store.get_sync(_ref("b"))}


def test_the_final_selection_of_a_pass_reads_no_row(tmp_path: Path) -> None:
    """After a pass wrote every relay of the namespace (one asks for selection), the
    final selection run reads none of their rows again: it used to scan the namespace."""
    async def run(store: LocalStore) -> Counter[str]:
        async def never(*_: Any) -> Any:
            raise AssertionError("no test here")
        world = BasicWorld(store=store, resolve_fn=never, probe_fn=never,
                           check_provider_fn=never, events=StoreEventSink(store),
                           limits=Limits(4, 4))
        store.update_status_sync(_ref("r00"), lambda cur: StatusWrite(
            status={"activeGeneration": 1, "conditions": [
                {"type": "Ready", "status": "True", "reason": "TestPassed", "message": "ok",
                 "lastTransitionTime": "2026-12-02T00:00:00Z", "observedGeneration": 1}]},
            memo=None))
        assert await select_scope("default", world) == "r00"  # the index is built
        for i in range(1, 40):
            store.update_status_sync(_ref(f"r{i:02d}"), _set(i))
        counting = CountingConnection(store._db)
        store._db = counting  # type: ignore[assignment]
        try:
            assert await select_scope("default", world) == "r00"
        finally:
            store._db = counting.db
        return counting.seen

    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc(f"r{i:02d}", selected=i == 0) for i in range(40)])
        with store.remember(), store.batched(max_delay=3600):
            seen = asyncio.run(run(store))
    assert seen["SELECT"] == 0, seen


def _doc_in(name: str, namespace: str, kind: str = KIND) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": {"host": "h"}}


MIXED = [_doc_in(n, ns, k) for n, ns, k in [
    ("b", "default", KIND), ("a", "default", KIND), ("\u00e4", "default", KIND),
    ("Z", "default", KIND), ("a-1", "other", KIND), ("\U0001f600", "other", KIND),
    ("p", "default", "OAuth2Provider"), ("a", "default", "OAuth2Provider"),
    ("\uff21", "zz", KIND)]]


@pytest.mark.parametrize(("kind", "namespace"),
                         [(None, None), (KIND, None), (KIND, "default"), (None, "other")])
def test_a_listing_of_remembered_objects_reads_no_row(tmp_path: Path, kind: str | None,
                                                      namespace: str | None) -> None:
    """Every object of the listing remembered (an apply's upsert and passes): the rows are
    counted, not read, and the listing is what reading them gives - the same objects, in
    the same order (SQLite's and Python's string order agree), statuses as read when
    ``as_read``."""
    with LocalStore(tmp_path / "s") as store:
        with store.remember():
            store.upsert_many(MIXED)
            for d in MIXED[::2]:
                store.update_status_sync(
                    ObjectRef(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]),
                    lambda cur: StatusWrite(status={"z": 1, "a": [2, {"y": 3, "b": 4}]},
                                            memo=None))
            expected = store.list_sync(kind, namespace)
            counting = CountingConnection(store._db)
            store._db = counting  # type: ignore[assignment]
            try:
                got = store.list_current_sync(kind, namespace)
                read = store.list_current_sync(kind, namespace, as_read=True)
            finally:
                store._db = counting.db
        assert counting.seen == Counter({"PRAGMA": 2, "SELECT": 2}), counting.seen
        assert got == expected
        assert [o.ref for o in got] == [o.ref for o in expected]
        assert [list(o.status) for o in read] == [list(o.status) for o in expected]


def test_a_row_not_remembered_means_reading_the_rows(tmp_path: Path) -> None:
    """A row this store has not seen inside remember() (written before it): the count
    differs, the namespace is read as before."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("early")])
        with store.remember():
            store.upsert_many([_doc("a"), _doc("b")])
            got = store.list_current_sync(KIND, "default")
            assert [o.ref.name for o in got] == ["a", "b", "early"]
            assert got == store.list_sync(KIND, "default")
