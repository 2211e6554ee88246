"""The local runtime's pass (``reconcile_objects``): every resource, a bounded number at a
time, by a fixed set of tasks (not a task per resource queued on a semaphore)."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.runtimes.local import _each
from reconciler.stores.base import ObjectRef


async def test_each_item_once_and_never_more_than_the_limit_at_a_time() -> None:
    items = [ObjectRef("ExternalSmtp", "default", f"r{i}") for i in range(50)]
    seen: list[ObjectRef] = []
    running = 0
    peak = 0

    async def fn(ref: ObjectRef) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)  # a yield to the loop (not a wait): let the others run
        seen.append(ref)
        running -= 1

    tasks_before = len(asyncio.all_tasks())
    await _each(items, fn, 7)
    assert sorted(seen, key=lambda r: r.name) == sorted(items, key=lambda r: r.name)
    assert len(seen) == len(set(seen)) == 50
    assert peak == 7
    assert len(asyncio.all_tasks()) == tasks_before


async def test_each_runs_up_to_the_limit_concurrently_and_raises_a_bug() -> None:
    items = [ObjectRef("ExternalSmtp", "default", f"r{i}") for i in range(10)]
    started: list[str] = []
    all_in = asyncio.Event()

    async def fn(ref: ObjectRef) -> None:
        started.append(ref.name)
        if len(started) == 4:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 10)  # the 4 tasks must be in flight together
        if ref.name == "r9":
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await _each(items, fn, 4)
    assert len(started) == 10
