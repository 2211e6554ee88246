"""The connection-test slots of ``Limits``: what a slot holds, and the limits it keeps.

A slot holds one of the host's slots and one of the global ones.  When the host limit is
no lower than the global one (the CLI with ``--per-host N --concurrency N``, as
``bench/fleet.py`` runs it), the host limit can never bind: at most ``concurrency`` tests
run at all.  Such a slot is the global FIFO semaphore alone - one acquire per test instead
of two, and no per-host bookkeeping (issue 15).  Both limits still hold in every
configuration.  Counts only, never a time.
"""

from __future__ import annotations

import asyncio

import pytest

from reconciler.engine.world import Limits


async def _run(limits: Limits, hosts: list[str]) -> tuple[int, dict[str, int], int]:
    """Run one slot per entry of ``hosts`` at once; the most slots held at once in all
    and per host, and the most host limiters that existed at once."""
    now: dict[str, int] = {}
    most: dict[str, int] = {}
    held = [0, 0]  # now, most
    limiters = [0]

    async def one(host: str) -> None:
        async with limits.slot(host, "ns"):
            now[host] = now.get(host, 0) + 1
            most[host] = max(most.get(host, 0), now[host])
            held[0] += 1
            held[1] = max(held[1], held[0])
            limiters[0] = max(limiters[0], len(limits._hosts))
            for _ in range(3):
                await asyncio.sleep(0)
            now[host] -= 1
            held[0] -= 1

    await asyncio.wait_for(asyncio.gather(*(one(h) for h in hosts)), 10)
    return held[1], most, limiters[0]


async def test_a_host_limit_no_lower_than_the_global_one_takes_no_host_slot() -> None:
    limits = Limits(concurrency=4, per_host=4)
    most, per_host, limiters = await _run(limits, ["a.example"] * 12 + ["b.example"] * 5)
    assert most == 4 and max(per_host.values()) == 4
    assert limiters == 0  # one semaphore per test, no host limiter
    assert limits._hosts == {} and limits._users == {}


@pytest.mark.parametrize("fair", [False, True])
async def test_a_lower_host_limit_still_binds(fair: bool) -> None:
    limits = Limits(concurrency=6, per_host=2, fair=fair)
    most, per_host, limiters = await _run(limits, ["a.example"] * 9 + ["b.example"] * 9
                                          + ["c.example"] * 9)
    assert most <= 6 and max(per_host.values()) <= 2 and limiters >= 1
    if not fair:  # one namespace here: fair slots also cap it below the limits
        assert most == 6 and per_host == {"a.example": 2, "b.example": 2, "c.example": 2}
    assert limits._hosts == {} and limits._users == {}


async def test_a_fair_limit_keeps_its_host_slots() -> None:
    """The operator's fair slots are left as they are (their host limit shares a host
    between namespaces)."""
    limits = Limits(concurrency=4, per_host=4, fair=True)
    most, _, limiters = await _run(limits, ["a.example"] * 8)
    assert most <= 4 and limiters == 1
