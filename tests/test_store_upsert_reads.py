"""``LocalStore.upsert_many`` reads the rows already there in a few queries (issue 15).

It used to read each manifest's row with its own query (1,000 queries before the first
test of a first apply of 1,000).  It now reads them by name list, at most
``UPSERT_READ_CHUNK`` names a query.  What each manifest sees must be what a query per
manifest saw: also a manifest given twice in one call sees the first one's write.
Statements are counted, never timed.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.stores import local as local_mod
from reconciler.stores.local import LocalStore
from tests.support.store_rows import manifest


def _counting(store: LocalStore) -> Counter[str]:
    seen: Counter[str] = Counter()
    store._db.set_trace_callback(lambda sql: seen.update([sql.split()[0].upper()]))
    return seen


def _in(name: str, namespace: str, kind: str = "ExternalSmtp") -> dict[str, Any]:
    m = manifest(name)
    m["kind"] = kind
    m["metadata"]["namespace"] = namespace
    return m


def test_existing_rows_are_read_by_name_list(tmp_path: Path) -> None:
    """Fails before: one SELECT per manifest (1,200 here, not 3; more names than one
    statement may bind with older SQLite builds, 999)."""
    n = 1200
    with LocalStore(tmp_path / "s") as store:
        seen = _counting(store)
        first = store.upsert_many([manifest(f"r{i:05d}") for i in range(n)], now=0.0)
        assert [u.change for u in first] == ["created"] * n
        assert seen["SELECT"] == 3 == -(-n // local_mod.UPSERT_READ_CHUNK)
        assert seen["INSERT"] == n
        # Two namespaces and two kinds: one query per group (the groups are small).
        seen.clear()
        groups = [_in("x", "a"), _in("y", "b"), _in("z", "b", "OAuth2Provider"), _in("w", "a")]
        assert [u.change for u in store.upsert_many(groups, now=0.0)] == ["created"] * 4
        assert seen["SELECT"] == 3


def test_what_each_manifest_sees_is_unchanged(tmp_path: Path) -> None:
    """Re-applied, changed (spec or metadata), given twice in one call: the changes,
    generations and versions a query per manifest gave."""
    with LocalStore(tmp_path / "s") as store:
        a, b, c = manifest("a"), manifest("b"), manifest("c")
        store.upsert_many([a, b, c], now=0.0)
        a2 = copy.deepcopy(a)
        a2["spec"]["port"] = 2525
        b2 = copy.deepcopy(b)
        b2["metadata"]["labels"] = {"team": "x"}
        a3 = copy.deepcopy(a2)
        a3["spec"]["port"] = 587
        out = store.upsert_many([a2, b2, c, a3, copy.deepcopy(a3), manifest("d")], now=5.0)
        got = [(u.obj.ref.name, u.change, u.obj.generation, u.obj.version) for u in out]
        assert got == [("a", "configured", 2, "2"), ("b", "metadata", 1, "2"),
                       ("c", "unchanged", 1, "1"), ("a", "configured", 3, "3"),
                       ("a", "unchanged", 3, "3"), ("d", "created", 1, "1")]
        stored = store.get_sync(out[3].obj.ref)
        assert stored is not None and stored.generation == 3 and stored.version == "3"
        assert stored.manifest["spec"]["port"] == 587
        assert out[4].obj.uid == out[0].obj.uid == stored.uid
        # A name given twice, both new: created once, then unchanged (not a second INSERT).
        twice = store.upsert_many([manifest("e"), manifest("e")], now=6.0)
        assert [u.change for u in twice] == ["created", "unchanged"]
        assert twice[0].obj.uid == twice[1].obj.uid
        assert twice[1].obj.created_at == twice[0].obj.created_at
