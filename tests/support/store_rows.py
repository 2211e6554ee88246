"""Rows for the local store's tests: a minimal ExternalSmtp manifest, a status mutator,
the committed rows as another process sees them, and a connection that counts the
statements the store runs (also used by ``bench/engine.py``)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.stores.base import StatusWrite, StoredObject


def manifest(name: str) -> dict[str, Any]:
    """A minimal ExternalSmtp ``name`` in ``default``."""
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "127.0.0.1", "port": 25, "authentication": "None"}}


def set_status(key: str, value: Any) -> Any:
    """A status mutator that sets ``status[key]`` and keeps the memo."""
    def mutate(cur: StoredObject) -> StatusWrite:
        return StatusWrite(status={**cur.status, key: value}, memo=cur.memo)
    return mutate


def committed(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` as another process sees them (committed ones only) in the state
    directory ``state``."""
    db = sqlite3.connect(state / "state.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


class CountingConnection:
    """A store's sqlite3 connection, counting each statement the store asks it to run
    (``execute``, and each row of ``executemany``) by its first word into :attr:`seen`
    (swap it for a new ``Counter`` to count a phase apart).  Not SQLite's trace
    callback: that also reports each trigger program a statement runs, under the
    statement's text."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.seen: Counter[str] = Counter()

    def execute(self, sql: str, *args: Any) -> Any:
        self.seen[sql.split(None, 1)[0].upper()] += 1
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        self.seen[sql.split(None, 1)[0].upper()] += len(rows)
        return self.db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)
