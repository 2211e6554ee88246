"""Rows for the local store's tests: a minimal ExternalSmtp manifest and a status
mutator."""

from __future__ import annotations

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
