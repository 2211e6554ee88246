"""Fair pass slots in the operator (issue 9, item 4: "one tenant's slow providers occupied
all pass slots so another tenant's resources got no status").  A hung OAuth exchange is
bounded by its deadline, but while it runs it holds a pass slot; FairSlots keeps a quarter
of the slots for other namespaces and hands a freed slot to the namespace with the fewest
passes running.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.fairslots import FairSlots
from reconciler.runtimes.operator.workers import WorkerPool
from reconciler.stores.base import ObjectRef


async def until(what: str, cond: object) -> None:
    """Let the loop run until ``cond()`` holds (bounded: no timer, a count of turns)."""
    for _ in range(10_000):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_a_namespace_never_takes_the_reserved_slots() -> None:
    slots = FairSlots(4)  # reserve 1: a namespace holds at most 3
    stack = AsyncExitStack()
    for _ in range(3):
        await stack.enter_async_context(slots.acquire("a"))
    fourth = asyncio.ensure_future(stack.enter_async_context(slots.acquire("a")))
    await asyncio.sleep(0)
    assert not fourth.done() and slots.busy == 3
    async with slots.acquire("b"):  # immediately: the reserved slot
        assert slots.running("b") == 1 and slots.busy == 4
    fourth.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fourth
    await stack.aclose()
    assert slots.busy == 0


async def test_a_freed_slot_goes_to_the_namespace_with_fewest_passes() -> None:
    slots = FairSlots(4)
    order: list[str] = []
    release = {ns: asyncio.Event() for ns in ("a1", "a2", "a3", "b1", "a4", "b2")}

    async def one(name: str) -> None:
        async with slots.acquire(name[0]):
            order.append(name)
            await release[name].wait()

    tasks = [asyncio.ensure_future(one(n)) for n in ("a1", "a2", "a3", "b1")]
    await asyncio.sleep(0)
    assert order == ["a1", "a2", "a3", "b1"] and slots.busy == 4
    tasks += [asyncio.ensure_future(one("a4")), asyncio.ensure_future(one("b2"))]
    await asyncio.sleep(0)
    release["a1"].set()  # a: 2 running, b: 1 running -> b goes first although a4 waited longer
    await until("a slot handed on", lambda: len(order) == 5)
    assert order[-1] == "b2"
    for event in release.values():
        event.set()
    await asyncio.gather(*tasks)
    assert slots.busy == 0


async def test_one_tenants_hung_passes_do_not_starve_another() -> None:
    """20 resources of tenant A hang in their passes (an OAuth exchange that never ends);
    tenant B's resource still gets its pass at once.  With the former single FIFO
    semaphore, B waited for a slot A never gave back."""
    hang = asyncio.Event()
    b_done = asyncio.Event()

    async def pass_fn(ref: ObjectRef) -> float | None:
        if ref.namespace == "tenant-a":
            await hang.wait()
        else:
            b_done.set()
        return 3600.0

    pool = WorkerPool(pass_fn, OperatorMetrics(), slots=8)
    try:
        for i in range(20):
            pool.ensure(ObjectRef("OAuth2Provider", "tenant-a", f"p{i}"), 1)
        await until("A holds all it may", lambda: pool._slots.busy == 6)  # 8 - reserve 2
        pool.ensure(ObjectRef("ExternalSmtp", "tenant-b", "mail"), 1)
        await asyncio.wait_for(b_done.wait(), 10)
    finally:
        hang.set()
        await pool.stop_all()
