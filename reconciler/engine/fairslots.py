"""Slots shared fairly between namespaces (tenants).

Used twice in the operator: its pass slots (``runtimes/operator/workers.py``) and its
connection-test limits (:class:`reconciler.engine.world.Limits` with ``fair=True``, global
and per host).  With one FIFO semaphore, a tenant with many resources whose OAuth
exchanges or connection tests hang (each bounded by its deadline, but up to minutes) could
hold every slot, and another tenant's resources would wait until those ended.
:class:`FairSlots` prevents that:

* a namespace never holds more than ``total - reserve`` slots: ``reserve`` slots (a
  quarter by default, at least one when there are two or more) are always left to the
  other namespaces;
* a freed slot goes to the waiting namespace with the fewest slots held (ties: the one
  served least recently); within a namespace, first come first served.

The reserve is the price: a lone namespace uses ``total - reserve`` slots.  For the pass
slots that is still more passes than connection tests may run at once; for the operator's
connection-test limits it is a quarter of the parallelism (at least one slot when there
are two or more), which is why the CLI, whose manifests all have one author, keeps plain
semaphores (``Limits(fair=False)``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    def __init__(self, total: int, *, reserve: int | None = None) -> None:
        if total < 1:
            raise ValueError("fair slots need at least 1 slot")
        self.total = total
        if reserve is None:
            reserve = max(1, total // 4) if total >= 2 else 0
        self.reserve = reserve
        self.per_namespace = max(1, total - self.reserve)
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._served: dict[str, int] = {}
        self._tick = 0
        self._busy = 0

    def running(self, namespace: str) -> int:
        return self._running.get(namespace, 0)

    @property
    def busy(self) -> int:
        return self._busy

    @asynccontextmanager
    async def acquire(self, namespace: str) -> AsyncIterator[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(namespace, deque()).append(fut)
        self._dispatch()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(namespace)  # granted, then cancelled before use
            else:
                queue = self._waiting.get(namespace)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._waiting[namespace]
            raise
        try:
            yield
        finally:
            self._release(namespace)

    def _release(self, namespace: str) -> None:
        self._busy -= 1
        left = self._running[namespace] - 1
        if left:
            self._running[namespace] = left
        else:
            del self._running[namespace]
            if namespace not in self._waiting:
                self._served.pop(namespace, None)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._busy < self.total:
            ready = [ns for ns, queue in self._waiting.items()
                     if queue and self._running.get(ns, 0) < self.per_namespace]
            if not ready:
                return
            ns = min(ready, key=lambda n: (self._running.get(n, 0), self._served.get(n, -1)))
            queue = self._waiting[ns]
            fut = queue.popleft()
            if not queue:
                del self._waiting[ns]
            if fut.cancelled():
                continue
            fut.set_result(None)
            self._busy += 1
            self._running[ns] = self._running.get(ns, 0) + 1
            self._tick += 1
            self._served[ns] = self._tick
