"""One timer per event loop for the slow-test announcements of every test in flight.

A connection test still running ``world.announce_after`` seconds after it got its slot is
announced (``Reconciling=True``, see ``reconcile._probe``).  That used to be a timer per
test - ``loop.call_later`` and, when the test ended first (nearly always), a cancel: a
``TimerHandle`` per test and the loop's upkeep of cancelled ones, ~3 us per test.  A
:class:`SlowWatch` keeps the deadlines of the tests in flight in a heap and holds one
timer, at the earliest deadline; when it fires, every test whose deadline has passed is
announced, exactly as its own timer would have done then.  A test that ends first is
discarded (no timer is touched unless it was the last one in flight).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["SlowWatch", "watch_of"]

# A deadline this close (seconds) counts as reached: the loop may run a timer up to its
# clock resolution early.
_EARLY = 1e-3


class SlowWatch:
    """The slow-test deadlines of one event loop (see the module docstring)."""

    __slots__ = ("_heap", "_live", "_seq", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (deadline, sequence, entry); an entry is [callback or None once done].
        self._heap: list[tuple[float, int, list[Callable[[], object] | None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._live = 0

    def add(self, after: float, fire: Callable[[], object]
            ) -> list[Callable[[], object] | None]:
        """Call ``fire`` in ``after`` seconds unless :meth:`discard` comes first."""
        when = self.loop.time() + after
        entry: list[Callable[[], object] | None] = [fire]
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        self._live += 1
        timer = self._timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(when, self._fire)
        return entry

    def discard(self, entry: list[Callable[[], object] | None]) -> None:
        """The test ended (or its pass was cancelled): no announcement any more."""
        if entry[0] is None:
            return
        entry[0] = None
        self._live -= 1
        if self._live == 0:  # nothing in flight: no timer, no heap left behind
            self._heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    @property
    def pending(self) -> int:
        """Tests in flight whose announcement has not come (yet)."""
        return self._live

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self.loop.time() + _EARLY
        while heap and (heap[0][0] <= now or heap[0][2][0] is None):
            _, _, entry = heapq.heappop(heap)
            fire = entry[0]
            if fire is not None:
                entry[0] = None
                self._live -= 1
                fire()
        if heap:
            self._timer = self.loop.call_at(heap[0][0], self._fire)


_last: tuple[asyncio.AbstractEventLoop, SlowWatch] | None = None


def watch_of(loop: asyncio.AbstractEventLoop) -> SlowWatch:
    """The watch of ``loop`` (the running one's, kept for the next test).  Another loop
    gets a new watch; a caller keeps the watch it added to, so a test on an earlier loop
    is discarded from its own."""
    global _last
    last = _last
    if last is not None and last[0] is loop:
        return last[1]
    watch = SlowWatch(loop)
    _last = (loop, watch)
    return watch
