"""Per-resource passes: at most one at a time per resource, bounded pass slots, timers.

A resource's pass (``pass_fn``) runs when the resource appears, when it is woken
(:meth:`WorkerPool.wake`: a new generation, a referenced Secret changed, its
OAuth2Provider changed readiness) and when the delay the last pass returned is over.  A
wake during a pass runs another pass right after it.  A pass that fails with an API or
store error is retried after a backoff; any other exception is logged and retried too
(one bad resource must not stop the others).

Between passes a resource holds no task, only a timer (``loop.call_at``) and a small
record: a sleeping task per resource (task, coroutine frame, wake event, timeout) was
~2.9 KB each, 29 MB of the operator's memory at 10,000 resources.  A task exists only
while a pass waits for its slot or runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.fairslots import FairSlots
from reconciler.runtimes.operator.settings import ERROR_BACKOFF, ERROR_BACKOFF_MAX
from reconciler.stores.base import ObjectRef, StoreError
from reconciler.stores.kubeapi import ApiError

log = logging.getLogger("smtpctl.operator")

PassFn = Callable[[ObjectRef], Awaitable[float | None]]  # delay to next pass; None: gone


class Worker:
    """One resource's bookkeeping: its pass in flight (``task``) or its next one (``timer``)."""

    __slots__ = ("again", "failures", "generation", "ref", "task", "timer")

    def __init__(self, ref: ObjectRef, generation: int = 0) -> None:
        self.ref = ref
        self.generation = generation
        self.failures = 0  # consecutive failed passes: the error backoff's exponent
        self.task: asyncio.Task[None] | None = None  # a pass waiting for its slot or running
        self.timer: asyncio.TimerHandle | None = None  # the next pass, when none is running
        self.again = False  # woken while its pass ran: one more pass right after


def error_backoff(failures: int) -> float:
    """Per-item exponential backoff after a failed pass: 1 s, 2 s, 4 s ... capped."""
    return float(min(ERROR_BACKOFF_MAX, ERROR_BACKOFF * 2 ** max(0, failures - 1)))


class WorkerPool:
    def __init__(self, pass_fn: PassFn, metrics: OperatorMetrics, *, slots: int) -> None:
        self._pass = pass_fn
        self._metrics = metrics
        self.workers: dict[ObjectRef, Worker] = {}
        self._busy = 0
        self.stopped = False
        # Passes that may run at once.  Without it, 10,000 resources starting together
        # would each queue their writes before any test could commit.  Shared fairly
        # between namespaces: one tenant's hung OAuth exchanges cannot hold every slot
        # (fairslots.py, docs/security.md).
        self._slots = FairSlots(max(2, slots))

    def ensure(self, ref: ObjectRef, generation: int) -> None:
        """Start passes for ``ref``, or wake it when ``generation`` is new to it."""
        worker = self.workers.get(ref)
        if worker is None:
            worker = self.workers[ref] = Worker(ref, generation)
            self._metrics.workers.set(len(self.workers))
            self._kick(worker)
        elif generation != worker.generation:
            worker.generation = generation
            self._kick(worker)

    def wake(self, refs: Iterable[ObjectRef]) -> None:
        for ref in refs:
            w = self.workers.get(ref)
            if w is not None:
                self._kick(w)

    def _kick(self, w: Worker) -> None:
        """A pass now: at once, or right after the one in flight."""
        if self.stopped:
            return
        if w.task is not None:
            w.again = True
            return
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        w.task = asyncio.get_running_loop().create_task(self._run(w), name=f"pass {w.ref}")

    def _due(self, w: Worker) -> None:
        w.timer = None
        if self.workers.get(w.ref) is w:
            self._kick(w)

    def stop(self, ref: ObjectRef) -> None:
        w = self.workers.pop(ref, None)
        if w is not None:
            if w.timer is not None:
                w.timer.cancel()
                w.timer = None
            if w.task is not None:
                w.task.cancel()
        self._metrics.workers.set(len(self.workers))

    async def _run(self, w: Worker) -> None:
        ref = w.ref
        delay: float | None = None
        try:
            while not self.stopped:
                w.again = False
                self._busy += 1
                self._metrics.queue_depth.set(self._busy)
                try:
                    async with self._slots.acquire(ref.namespace):
                        delay = await self._pass(ref)
                    w.failures = 0
                except asyncio.CancelledError:
                    raise
                except (StoreError, ApiError) as exc:
                    w.failures += 1
                    delay = error_backoff(w.failures)
                    log.warning("reconcile failed; retrying", extra={
                        "resource": str(ref), "error": str(exc), "retryAfter": delay})
                except Exception as exc:  # one bad resource must not stop the others
                    w.failures += 1
                    delay = error_backoff(w.failures)
                    log.exception("reconcile crashed; retrying", extra={
                        "resource": str(ref), "error": type(exc).__name__,
                        "retryAfter": delay})
                finally:
                    self._busy -= 1
                    self._metrics.queue_depth.set(self._busy)
                if delay is None:  # gone: a later event for the same name starts anew
                    if self.workers.get(ref) is w:
                        del self.workers[ref]
                        self._metrics.workers.set(len(self.workers))
                    return
                if not w.again:
                    break
        finally:
            w.task = None
        if delay is not None and not self.stopped and self.workers.get(ref) is w:
            w.timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._due, w)

    async def stop_all(self) -> None:
        self.stopped = True
        tasks = []
        for w in self.workers.values():
            if w.timer is not None:
                w.timer.cancel()
                w.timer = None
            if w.task is not None:
                w.task.cancel()
                tasks.append(w.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
