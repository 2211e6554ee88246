"""A previewed verdict's candidate is built once (engine/selection.py, issue 15).

A pass of a relay that asks for selection hands its verdict to the selection run, which
decides on it as it will be written (the preview).  The candidate built for the preview
also serves the index's memo of the previewed object: it used to be built a second time
(one build more per requested relay and pass; ``tests/test_selection_memo.py`` bounds the
builds per apply).  Counts, never a time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import selection
from reconciler.engine.selection import OwnWrite, select_scope_with
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.stores.base import StatusWrite, StoredObject
from reconciler.stores.local import LocalStore

KIND = "ExternalSmtp"
READY = {"activeGeneration": 1, "conditions": [
    {"type": "Ready", "status": "True", "reason": "TestPassed", "message": "ok",
     "lastTransitionTime": "2026-12-02T00:00:00Z", "observedGeneration": 1}]}


def _doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND,
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "h", "port": 25, "selected": True}}


def _verdict(cur: StoredObject) -> StatusWrite:
    return StatusWrite(status={**cur.status, **READY}, memo=cur.memo)


def test_a_previewed_verdict_builds_its_candidate_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    real = selection.candidate

    def counting(obj: StoredObject) -> selection.Candidate:
        builds.append(obj.ref.name)
        return real(obj)

    async def run(store: LocalStore) -> StoredObject | None:
        async def never(*_: Any) -> Any:
            raise AssertionError("no test here")
        world = BasicWorld(store=store, resolve_fn=never, probe_fn=never,
                           check_provider_fn=never, events=StoreEventSink(store),
                           limits=Limits(4, 4))
        await select_scope_with("default", world)  # the index is built
        monkeypatch.setattr(selection, "candidate", counting)
        winner, written = await select_scope_with("default", world, OwnWrite("a", _verdict))
        assert winner == "a"
        return written

    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([_doc("a"), _doc("b")])
        with store.remember():
            written = asyncio.run(run(store))
    assert written is not None and written.status["selected"] is True
    assert builds.count("a") == 1, builds
