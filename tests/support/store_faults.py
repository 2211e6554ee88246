"""Faults for the local store's SQLite connection (tests of the store's failure paths)."""

from __future__ import annotations

import sqlite3
from typing import Any


class FailingCommit:
    """A connection whose next COMMIT fails as a full disk would make it fail."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.fail = True

    def execute(self, sql: str, *args: Any) -> Any:
        if self.fail and sql == "COMMIT":
            self.fail = False
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)
