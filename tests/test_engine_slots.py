"""The CLI's connection-test slots (``Limits(fair=False)``): first come first served.

The local runtime runs 128 passes for 32 slots, so nearly every test waits for a slot.
The slots are a small FIFO of their own instead of ``asyncio.Semaphore`` (issue 15):
these tests pin the order and the cancellation rules asyncio's gave, and count the work
a wait costs (never a time).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler.engine.world import Limits


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_slots_are_handed_out_in_arrival_order() -> None:
    """A freed slot goes to the longest waiter, never to a pass that asks later - also
    one that asks in the same turn of the loop as the slot is freed."""
    limits = Limits(concurrency=2, per_host=2)
    order: list[str] = []
    gates = {name: asyncio.Event() for name in "abcdef"}

    async def test(name: str) -> None:
        async with limits.slot("relay.example"):
            order.append(name)
            await gates[name].wait()

    tasks = {name: asyncio.ensure_future(test(name)) for name in "abcd"}
    await _turns()
    assert order == ["a", "b"]
    gates["a"].set()
    tasks["e"] = asyncio.ensure_future(test("e"))  # asks as a's slot is freed
    await _turns()
    assert order == ["a", "b", "c"]
    for name in "bcdef":
        gates[name].set()
    await asyncio.wait_for(asyncio.gather(*tasks.values()), 10)
    assert order == ["a", "b", "c", "d", "e"]
    assert limits._hosts == {} and limits._users == {}


async def test_a_cancelled_waiter_is_skipped_and_a_granted_one_passes_its_slot_on() -> None:
    limits = Limits(concurrency=1, per_host=1)
    order: list[str] = []
    release = asyncio.Event()

    async def test(name: str) -> None:
        async with limits.slot("relay.example"):
            order.append(name)
            if name == "a":
                await release.wait()

    a = asyncio.ensure_future(test("a"))
    await _turns()
    b = asyncio.ensure_future(test("b"))
    c = asyncio.ensure_future(test("c"))
    d = asyncio.ensure_future(test("d"))
    await _turns()
    b.cancel()  # cancelled while waiting: never runs, takes nothing
    release.set()
    await asyncio.sleep(0)  # a leaves: its slot is handed to c ...
    c.cancel()  # ... which is cancelled before it runs: the slot goes on to d
    await asyncio.wait_for(asyncio.gather(a, d), 10)
    for t in (b, c):
        with pytest.raises(asyncio.CancelledError):
            await t
    assert order == ["a", "d"]
    await asyncio.wait_for(_enter(limits), 10)  # nothing held any more
    assert limits._hosts == {} and limits._users == {}


async def _enter(limits: Limits) -> None:
    async with limits.slot("relay.example"):
        pass


async def test_a_wait_for_a_slot_does_no_loop_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a wait costs: one future and one wake-up.  asyncio's semaphore also looked
    the running loop up through its mixin on every acquire and ran ``acquire`` as a
    coroutine of its own (100 waits: 100 lookups)."""
    from asyncio import mixins

    calls: list[int] = []
    real: Any = getattr(mixins._LoopBoundMixin, "_get_loop")

    def counting(self: Any) -> Any:
        calls.append(1)
        return real(self)

    limits = Limits(concurrency=1, per_host=1)
    inside: list[int] = []
    most: list[int] = [0]

    async def test() -> None:
        async with limits.slot("relay.example"):
            inside.append(1)
            most[0] = max(most[0], len(inside))
            await asyncio.sleep(0)  # in flight: the others wait
            inside.pop()

    monkeypatch.setattr(mixins._LoopBoundMixin, "_get_loop", counting)
    await asyncio.wait_for(asyncio.gather(*(test() for _ in range(101))), 10)
    assert most == [1]
    assert calls == [], len(calls)
