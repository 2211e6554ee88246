"""Kubernetes Events of the operator: counted, logged, and rate-limited per object.

Like client-go's event correlator: an Event identical to one posted for the same object
in the last :data:`DEDUPE_SECONDS` (same type, reason and message) is not posted again,
and each object has a token bucket (:data:`BURST` Events, refilled one per
:data:`REFILL_SECONDS`), so a flapping relay cannot flood the API server with Events.
Suppressed Events are counted (``smtpctl_events_suppressed_total``) and logged at debug.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from reconciler.engine.world import StoreEventSink
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.stores.base import Event, ObjectRef
from reconciler.stores.kube import KubeStore

log = logging.getLogger("smtpctl.operator")

DEDUPE_SECONDS = 600.0
BURST = 25
REFILL_SECONDS = 300.0 / BURST  # a full bucket again after five quiet minutes
MAX_TRACKED = 50_000  # objects remembered (oldest forgotten first)


class EventSink(StoreEventSink):
    def __init__(self, store: KubeStore, metrics: OperatorMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(store)
        self._metrics = metrics
        self._clock = clock
        self._recent: dict[tuple[ObjectRef, str, str, str], float] = {}
        self._buckets: dict[ObjectRef, tuple[float, float]] = {}  # ref -> (tokens, at)

    def _allow(self, event: Event) -> bool:
        now = self._clock()
        key = (event.ref, event.type, event.reason, event.message)
        last = self._recent.get(key)
        if last is not None and now - last < DEDUPE_SECONDS:
            return False
        tokens, at = self._buckets.get(event.ref, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) / REFILL_SECONDS)
        if tokens < 1:
            self._buckets[event.ref] = (tokens, now)
            return False
        self._buckets[event.ref] = (tokens - 1, now)
        self._recent[key] = now
        if len(self._recent) > MAX_TRACKED:
            for old in sorted(self._recent, key=self._recent.__getitem__)[:MAX_TRACKED // 10]:
                del self._recent[old]
        if len(self._buckets) > MAX_TRACKED:
            for ref in list(self._buckets)[:MAX_TRACKED // 10]:
                del self._buckets[ref]
        return True

    async def emit(self, event: Event) -> None:
        if not self._allow(event):
            self._metrics.events_suppressed_of(event.type, event.reason).inc()
            log.debug("event suppressed", extra={"resource": str(event.ref),
                                                 "reason": event.reason})
            return
        self._metrics.events_of(event.type, event.reason).inc()
        log.info("event", extra={"resource": str(event.ref), "reason": event.reason,
                                 "type": event.type})
        await super().emit(event)
