"""One worker (an asyncio task) per resource, and the slots that bound how many run a pass.

A worker runs a pass (``pass_fn``), sleeps until the delay the pass returned and is woken
early by :meth:`WorkerPool.wake` (a new generation, a referenced Secret changed, its
OAuth2Provider changed readiness).  A pass that fails with an API or store error is
retried after a backoff; any other exception is logged and retried too (one bad
resource must not stop the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.fairslots import FairSlots
from reconciler.runtimes.operator.settings import ERROR_BACKOFF, ERROR_BACKOFF_MAX
from reconciler.stores.base import ObjectRef, StoreError
from reconciler.stores.kubeapi import ApiError

log = logging.getLogger("smtpctl.operator")

PassFn = Callable[[ObjectRef], Awaitable[float | None]]  # delay to next pass; None: gone


@dataclass
class Worker:
    ref: ObjectRef
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    generation: int = 0
    failures: int = 0  # consecutive failed passes: the error backoff's exponent


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
        # Workers that may run a pass at once.  Without it, 10,000 workers starting
        # together would each queue an announce write before any test could commit.
        # Shared fairly between namespaces: one tenant's hung OAuth exchanges cannot hold
        # every slot (fairslots.py, docs/security.md).
        self._slots = FairSlots(max(2, slots))

    def ensure(self, ref: ObjectRef, generation: int) -> None:
        """Start a worker for ``ref``, or wake it when ``generation`` is new to it."""
        worker = self.workers.get(ref)
        if worker is None:
            self._start(ref, generation)
        elif generation != worker.generation:
            worker.generation = generation
            worker.wake.set()

    def wake(self, refs: Iterable[ObjectRef]) -> None:
        for ref in refs:
            w = self.workers.get(ref)
            if w is not None:
                w.wake.set()

    def _start(self, ref: ObjectRef, generation: int) -> None:
        w = Worker(ref, generation=generation)
        w.task = asyncio.get_running_loop().create_task(self._run(w), name=f"worker {ref}")
        self.workers[ref] = w
        self._metrics.workers.set(len(self.workers))

    def stop(self, ref: ObjectRef) -> None:
        w = self.workers.pop(ref, None)
        if w is not None and w.task is not None:
            w.task.cancel()
        self._metrics.workers.set(len(self.workers))

    async def _run(self, w: Worker) -> None:
        ref = w.ref
        while not self.stopped:
            w.wake.clear()
            delay: float | None = None
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
                    "resource": str(ref), "error": type(exc).__name__, "retryAfter": delay})
            finally:
                self._busy -= 1
                self._metrics.queue_depth.set(self._busy)
            if delay is None:  # gone: a later event for the same name starts a new worker
                if self.workers.get(ref) is w:
                    del self.workers[ref]
                return
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel (stop())
            # that lands in the step the wake fires, leaving an orphan worker running
            # (tests/test_cancellation.py).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await w.wake.wait()

    async def stop_all(self) -> None:
        self.stopped = True
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
