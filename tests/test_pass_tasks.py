"""How many passes ``reconcile_objects`` runs at once (runtimes.local.task_limit).

With no host limit below the global one, a pass can only wait for a global slot: the
limit plus a few spare passes run at once (before: 4x the limit, at least 64, whose extra
passes only queued on the slots).  With a host limit below the global one, or fair slots,
the 4x stay: passes of one busy host must not hold every task while other hosts' slots
are free.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconciler.engine.reconcile import ReconcileAction, ReconcileResult
from reconciler.engine.world import Limits
from reconciler.runtimes import local
from reconciler.stores.base import ObjectRef


@dataclass
class World:
    limits: Limits
    store: Any = None
    passes: int = 0
    running: int = 0
    most: int = 0
    done: list[ObjectRef] = field(default_factory=list)

    def begin_pass(self) -> None:
        self.passes += 1


def _run(limits: Limits, n: int, monkeypatch: pytest.MonkeyPatch) -> World:
    world = World(limits)

    async def reconcile(ref: ObjectRef, w: World, *, force: bool = False) -> ReconcileResult:
        # Every pass waits for a test slot, as a first apply's do (the slot is the only
        # thing that makes them wait here).
        w.running += 1
        w.most = max(w.most, w.running)
        async with w.limits.slot("relay.example.test", "default"):
            await asyncio.sleep(0)
        w.running -= 1
        w.done.append(ref)
        return ReconcileResult(ref, {}, None, ReconcileAction.SKIPPED)

    monkeypatch.setattr(local, "reconcile", reconcile)
    refs = [ObjectRef("ExternalSmtp", "default", f"r{i:03d}") for i in range(n)]

    async def main() -> None:
        async with asyncio.timeout(30):
            await local.reconcile_objects(refs, world)  # type: ignore[arg-type]

    asyncio.run(main())
    assert sorted(r.name for r in world.done) == sorted(r.name for r in refs)
    return world


def test_one_limit_runs_the_limit_and_a_few_spare_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = _run(Limits(8, 8), 200, monkeypatch)
    assert world.most < 64  # fails before: 64 passes at once, 56 of them queued on a slot
    assert world.most == 8 + local.SPARE_TASKS


def test_a_lower_host_limit_keeps_many_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(Limits(8, 2), 200, monkeypatch).most == 64
    assert _run(Limits(32, 4), 200, monkeypatch).most == 128


def test_fair_slots_keep_many_passes() -> None:
    assert local.task_limit(Limits(8, 8, fair=True)) == 64
    assert local.task_limit(Limits(32, 32)) == 32 + local.SPARE_TASKS
