"""``LocalStore.remember``: inside it, a status write (and the engine's ``get``) hands
back the object this store last wrote or read when its row still has that version,
instead of decoding the row again; a row changed by anyone else is read again.  The
object is shared, so the engine's mutators must never change what they are given: the
last test runs whole applies (passes, failures, selection, failover, an OAuth2 provider,
an unchanged re-apply) with every mutator checked."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
from typing import Any

import pytest

from reconciler.engine.world import Limits
from reconciler.runtimes.local import apply_manifests, build_world
from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject
from reconciler.stores.local import LocalStore
from tests.support.engine_env import Env, e2e_fixture  # noqa: F401
from tests.test_apply_report_objects import _fleet

REF = ObjectRef("ExternalSmtp", "default", "r")
DOC = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
       "metadata": {"name": "r", "namespace": "default"}, "spec": {"host": "h", "port": 25}}


def _writer(value: int, seen: list[StoredObject]) -> Any:
    def mutate(cur: StoredObject) -> StatusWrite:
        seen.append(cur)
        return StatusWrite(status={**cur.status, "n": value}, memo=None)
    return mutate


def test_a_status_write_inside_remember_reuses_the_object_it_wrote(tmp_path: Any) -> None:
    seen: list[StoredObject] = []
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([DOC])
        with store.remember():
            first = store.update_status_sync(REF, _writer(1, seen))
            second = store.update_status_sync(REF, _writer(2, seen))
            assert seen[1] is first  # not decoded again
            assert asyncio.run(store.get(REF)) is second
        third = store.update_status_sync(REF, _writer(3, seen))
        assert seen[2] is not second and seen[2].status == {"n": 2}  # outside: read
        assert third is not None and store.get_sync(REF).status == {"n": 3}  # type: ignore[union-attr]


def test_a_row_changed_elsewhere_is_read_again(tmp_path: Any) -> None:
    seen: list[StoredObject] = []
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([DOC])
        with store.remember():
            first = store.update_status_sync(REF, _writer(1, seen))
            assert first is not None
            store.flush()
            other = sqlite3.connect(tmp_path / "s" / "state.db")
            with other:
                other.execute("UPDATE resources SET status=?, version=version+1 WHERE name='r'",
                              (json.dumps({"n": 42, "by": "another process"}),))
            other.close()
            assert asyncio.run(store.get(REF)).status == {"n": 42, "by": "another process"}  # type: ignore[union-attr]
            store.update_status_sync(REF, _writer(2, seen))
            assert seen[-1].status == {"n": 42, "by": "another process"}
            other = sqlite3.connect(tmp_path / "s" / "state.db")
            with other:
                other.execute("DELETE FROM resources WHERE name='r'")
            other.close()
            assert store.update_status_sync(REF, _writer(3, seen)) is None  # gone
            assert asyncio.run(store.get(REF)) is None


def _frozen(obj: StoredObject) -> tuple[Any, ...]:
    # json.dumps without sort_keys: a reordered dict is a change too
    return (json.dumps(obj.status), json.dumps(obj.manifest), copy.deepcopy(obj.memo),
            obj.version, obj.generation)


def test_the_engines_mutators_never_change_the_object_they_are_given(
        e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRONG_PW", "not-the-password")
    checked: list[str] = []
    real = LocalStore.update_status_sync

    def checking(self: LocalStore, ref: ObjectRef, mutate: Any) -> StoredObject | None:
        def guarded(cur: StoredObject) -> Any:
            before = _frozen(cur)
            out = mutate(cur)
            assert _frozen(cur) == before, f"a mutator changed the object of {ref}"
            checked.append(ref.name)
            return out
        return real(self, ref, guarded)

    monkeypatch.setattr(LocalStore, "update_status_sync", checking)
    with LocalStore(e2e.state) as store:
        world = build_world(store, limits=Limits(8, 8))
        for docs in (_fleet(e2e), _fleet(e2e, main_env="WRONG_PW"), _fleet(e2e, "WRONG_PW"),
                     _fleet(e2e)):
            out = asyncio.run(apply_manifests(store, world, docs, keep_objects=True))
            assert out.objects is not None
    assert {"main", "standby", "twin", "broken", "plain", "oauth", "idp",
            "elsewhere"} <= set(checked)
