"""A pass's read of its object takes no statement while the store holds the write lock.

``reconcile`` reads its object by key when the pass starts (``store.get``).  Inside
``remember()`` the local store hands back the object as it last wrote or read it, after
checking the row's version: one ``SELECT`` per pass (issue 15).  Inside an apply's group
commit the store's connection holds SQLite's write lock (``BEGIN IMMEDIATE``) from the
first unit of a transaction to its ``COMMIT``: no other connection can commit meanwhile,
so one check that nothing was committed by another connection (``PRAGMA data_version``)
per transaction covers every read in it.  Were that wrong, a pass could work on a status
another process had changed (for example decide a selection from a stale status); so the
tests also check that another connection cannot write while the lock is held and that a
commit by another connection between two transactions is read.  Counts and contents only,
never a time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.runtimes.local import reconcile_objects
from reconciler.stores.base import ObjectRef, StoredObject
from reconciler.stores.local import LocalStore
from tests.support.store_rows import CountingConnection
from tests.support.store_rows import manifest as _manifest
from tests.support.store_rows import set_status as _set


def _ref(name: str) -> ObjectRef:
    return ObjectRef("ExternalSmtp", "default", name)


def _get(store: LocalStore, name: str) -> StoredObject | None:
    return asyncio.run(store.get(_ref(name)))


def test_reads_inside_a_write_transaction_take_one_check_in_all(tmp_path: Path) -> None:
    """30 reads of remembered objects inside one group-commit transaction: one PRAGMA in
    all (it was one SELECT each), and each read is the object as the store wrote it."""
    with LocalStore(tmp_path / "s") as store:
        names = [f"r{i}" for i in range(30)]
        store.upsert_many([_manifest(n) for n in names])
        with store.remember(), store.batched(max_delay=3600, max_units=10_000):
            written = {n: store.update_status_sync(_ref(n), _set("n", n)) for n in names}
            counting = CountingConnection(store._db)
            store._db = counting  # type: ignore[assignment]
            try:
                got = {n: _get(store, n) for n in names}
            finally:
                store._db = counting.db
        assert counting.seen == Counter({"PRAGMA": 1}), counting.seen
        assert all(got[n] is written[n] for n in names)
        assert all(store.get_sync(_ref(n)) == written[n] for n in names)


def test_no_other_connection_commits_while_the_lock_is_held(tmp_path: Path) -> None:
    """The premise: from the transaction's first unit to its COMMIT, another connection's
    write fails (busy) instead of committing under the store's reads."""
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_manifest("a")])
        with store.remember(), store.batched(max_delay=3600, max_units=10_000):
            store.update_status_sync(_ref("a"), _set("n", 1))
            other = sqlite3.connect(tmp_path / "s" / "state.db", timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match=r"locked|busy"):
                    with other:
                        other.execute("UPDATE resources SET status=? WHERE name='a'",
                                      (json.dumps({"n": "other"}),))
            finally:
                other.close()
            got = _get(store, "a")
            assert got is not None and got.status == {"n": 1}


def test_a_commit_between_two_transactions_is_read(tmp_path: Path) -> None:
    """After the group commit's COMMIT, another connection commits; the next transaction
    checks again: the read is the row as the other connection left it, and a status
    write is computed from that row (never from the remembered object)."""
    state = tmp_path / "s"
    with LocalStore(state) as store:
        store.upsert_many([_manifest("a"), _manifest("b")])
        with store.remember(), store.batched(max_delay=3600, max_units=10_000):
            store.update_status_sync(_ref("a"), _set("n", 1))
            store.flush()  # COMMIT: the lock is released
            other = sqlite3.connect(state / "state.db")
            with other:
                other.execute("UPDATE resources SET status=?, version=version+1 "
                              "WHERE name='a'", (json.dumps({"n": "other"}),))
            other.close()
            store.update_status_sync(_ref("b"), _set("n", 2))  # a new transaction
            got = _get(store, "a")
            assert got is not None and got.status == {"n": "other"}
            after = store.update_status_sync(_ref("a"), _set("m", 3))
            assert after is not None and after.status == {"n": "other", "m": 3}


_VERDICT = Verdict(True, "quit", "TestPassed", "ok", "", False, 0.01,
                   details={"tlsMode": "none"})


async def _resolve(res: ExternalSmtp, provider: OAuth2Provider | None) -> Any:
    from reconciler.credentials.resolve import SmtpCredentials

    return SmtpCredentials(probe=ProbeCredentials(password=None), versions={})


async def _probe(spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
    await asyncio.sleep(0)
    return _VERDICT


async def _no_provider(provider: OAuth2Provider) -> Any:
    raise AssertionError("no provider here")


def test_a_first_pass_reads_its_objects_without_a_statement_each(tmp_path: Path) -> None:
    """A first pass over 400 relays inside remember() (as an apply runs it): the pass
    starts each relay with a read of it, which was a SELECT of its row's version; now
    the reads of a group-commit transaction cost one PRAGMA together.  Every relay is
    tested and Ready, as before."""
    n = 400
    with LocalStore(tmp_path / "s") as store:
        with store.remember():
            refs = [u.obj.ref for u in store.upsert_many(
                [_manifest(f"r{i:03d}") for i in range(n)])]
            world = BasicWorld(store=store, resolve_fn=_resolve, probe_fn=_probe,
                               check_provider_fn=_no_provider,
                               events=StoreEventSink(store), limits=Limits(8, 8))
            counting = CountingConnection(store._db)
            store._db = counting  # type: ignore[assignment]
            try:
                results = asyncio.run(reconcile_objects(refs, world))
            finally:
                store._db = counting.db
        assert sum(r.tested for r in results) == n
        assert all(o.status["conditions"][0]["status"] == "True"
                   for o in store.list_sync("ExternalSmtp"))
        # Left: the reads before the pass's first unit opened the transaction (one per
        # pass task started then, 64) and the final selection's count of the rows; it
        # was a read per relay besides.
        assert counting.seen["SELECT"] < n // 4, counting.seen
