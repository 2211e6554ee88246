"""``LocalStore.changes_since``, which selection's per-namespace index relies on to read
only the relays written since its previous run (engine/selection.py): it names every
write made through this store, and says "cannot tell" (None: the caller lists) outside
``remember()``, for a token it did not hand out, and once another connection - another
process - has committed, whose writes it cannot name.  Were a foreign commit missed,
selection could decide from a stale view of who is selected."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject
from reconciler.stores.local import LocalStore

KIND = "ExternalSmtp"


def _doc(name: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"host": "h", "port": 25}}


def _set(value: int) -> Any:
    def mutate(cur: StoredObject) -> StatusWrite:
        return StatusWrite(status={**cur.status, "n": value}, memo=None)
    return mutate


def test_writes_through_the_store_are_named_per_namespace(tmp_path: Any) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("a"), _doc("b"), _doc("c", "other")])
        assert store.changes_since(KIND, "default", None) == (None, None)  # outside
        with store.remember():
            token, names = store.changes_since(KIND, "default", None)
            assert names is None  # no token yet: list
            store.update_status_sync(ObjectRef(KIND, "default", "a"), _set(1))
            store.update_status_sync(ObjectRef(KIND, "other", "c"), _set(1))
            token, names = store.changes_since(KIND, "default", token)
            assert names == {"a"}
            token, names = store.changes_since(KIND, "default", token)
            assert names == set()  # nothing since
            store.delete_sync(ObjectRef(KIND, "default", "b"))
            assert store.changes_since(KIND, "default", token)[1] == {"b"}
            assert store.changes_since(KIND, "default", ("not", 0))[1] is None


def test_a_commit_by_another_connection_means_list_again(tmp_path: Any) -> None:
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("a"), _doc("b")])
        with store.remember():
            token, _ = store.changes_since(KIND, "default", None)
            store.update_status_sync(ObjectRef(KIND, "default", "a"), _set(1))
            store.flush()
            other = sqlite3.connect(tmp_path / "s" / "state.db")
            with other:  # another process selects b: this store cannot name it
                other.execute("UPDATE resources SET status=?, version=version+1 "
                              "WHERE name='b'", (json.dumps({"selected": True}),))
            other.close()
            token, names = store.changes_since(KIND, "default", token)
            assert names is None
            store.update_status_sync(ObjectRef(KIND, "default", "a"), _set(2))
            assert store.changes_since(KIND, "default", token)[1] == {"a"}  # in step again
