"""The operator's per-resource passes (``WorkerPool``): one pass at a time per resource, a
wake during a pass runs one more pass right after it, the delay a pass returns schedules
the next one, and a resource between passes holds a timer, not a task (memory: a task
per sleeping resource was ~2.9 KB, 29 MB at 10,000)."""

from __future__ import annotations

import asyncio

from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.workers import WorkerPool
from reconciler.stores.base import ObjectRef

REF = ObjectRef("ExternalSmtp", "mail", "a")


async def _until(what: str, cond: object) -> None:
    for _ in range(10_000):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def test_a_wake_during_a_pass_runs_one_more_pass_after_it() -> None:
    running, release = asyncio.Event(), asyncio.Event()
    passes: list[int] = []
    concurrent = 0
    most = 0

    async def pass_fn(ref: ObjectRef) -> float | None:
        nonlocal concurrent, most
        concurrent += 1
        most = max(most, concurrent)
        passes.append(len(passes))
        if len(passes) == 1:
            running.set()
            await release.wait()
        concurrent -= 1
        return 3600.0

    pool = WorkerPool(pass_fn, OperatorMetrics(), slots=4)
    try:
        pool.ensure(REF, 1)
        await asyncio.wait_for(running.wait(), 10)
        pool.wake([REF])
        pool.wake([REF])  # two wakes during one pass: one more pass, not two
        pool.ensure(REF, 2)  # a new generation during it: the same one more pass
        release.set()
        await _until("the second pass", lambda: len(passes) == 2
                     and pool.workers[REF].task is None)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(passes) == 2 and most == 1
        w = pool.workers[REF]
        assert w.task is None and w.timer is not None  # asleep: a timer, no task
        assert w.generation == 2
    finally:
        await pool.stop_all()


async def test_the_returned_delay_schedules_the_next_pass_and_none_ends_it() -> None:
    passes = 0
    done = asyncio.Event()

    async def pass_fn(ref: ObjectRef) -> float | None:
        nonlocal passes
        passes += 1
        if passes == 3:
            done.set()
            return None  # gone
        return 0.0  # due again at once

    pool = WorkerPool(pass_fn, OperatorMetrics(), slots=4)
    try:
        pool.ensure(REF, 1)
        await asyncio.wait_for(done.wait(), 10)
        await _until("forgotten", lambda: REF not in pool.workers)
        assert passes == 3
    finally:
        await pool.stop_all()


async def test_a_failed_pass_is_retried_after_its_backoff_and_a_wake_skips_the_wait() -> None:
    calls = 0
    second = asyncio.Event()

    async def pass_fn(ref: ObjectRef) -> float | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")  # logged, retried after error_backoff(1) = 1 s
        second.set()
        return 3600.0

    pool = WorkerPool(pass_fn, OperatorMetrics(), slots=4)
    try:
        pool.ensure(REF, 1)
        await _until("the failed pass", lambda: calls == 1 and pool.workers[REF].task is None)
        w = pool.workers[REF]
        assert w.failures == 1 and w.timer is not None
        timer = w.timer
        pool.wake([REF])  # a change: no need to wait for the backoff
        assert w.task is not None and timer.cancelled()  # the pass starts now
        await asyncio.wait_for(second.wait(), 10)
        await _until("settled", lambda: w.task is None)
        assert w.failures == 0 and calls == 2
    finally:
        await pool.stop_all()


async def test_stop_all_leaves_no_task_and_no_timer() -> None:
    started = asyncio.Event()

    async def pass_fn(ref: ObjectRef) -> float | None:
        if ref.name == "hang":
            started.set()
            await asyncio.Event().wait()
        return 3600.0

    pool = WorkerPool(pass_fn, OperatorMetrics(), slots=4)
    pool.ensure(REF, 1)
    hang = ObjectRef("ExternalSmtp", "mail", "hang")
    pool.ensure(hang, 1)
    await asyncio.wait_for(started.wait(), 10)
    await _until("a asleep", lambda: pool.workers[REF].task is None)
    a, h = pool.workers[REF], pool.workers[hang]
    task = h.task
    await pool.stop_all()
    assert task is not None and task.cancelled()
    assert a.timer is None and not pool.workers
    pool.wake([REF])  # after stop_all: nothing starts
    assert a.task is None
