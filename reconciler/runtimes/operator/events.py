"""Kubernetes Events of the operator: counted, logged, and rate-limited.

Two limits, each a token bucket, checked before an Event is posted:

* **per object**, like client-go's event correlator: an Event identical to one posted for
  the same object in the last :data:`DEDUPE_SECONDS` (same type, reason and message) is
  not posted again, and each object has a bucket of :data:`BURST` Events, refilled one
  per :data:`REFILL_SECONDS`, so a flapping relay cannot flood the API server;
* **per namespace, Normal Events only**, like kube-apiserver's ``EventRateLimit``
  admission plugin with a ``Namespace`` limit: each namespace has a bucket of
  :data:`NAMESPACE_BURST` Events refilled at :data:`NAMESPACE_QPS` per second, kept in
  an LRU of :data:`NAMESPACE_CACHE` namespaces (a namespace forgotten by the LRU starts
  again with a full bucket, as in the plugin).  A namespace that creates thousands of
  relays at once posts its first 100 ``TestPassed`` Events and then a few per second,
  not one per relay; another namespace's bucket is its own, so one tenant's flood never
  suppresses another tenant's Events.

Warning Events are only under the per-object limit: a failure is always visible (each
follows a connection test or a selection change of its own object, so their rate is
bounded by the test slots and by the per-object bucket).  Status conditions remain the
source of truth; an Event is the human-readable trace of a transition.  Suppressed
Events are counted (``smtpctl_events_suppressed_total{type,reason,limit}`` with
``limit`` = ``duplicate``, ``object`` or ``namespace``) and logged at debug.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
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

NAMESPACE_BURST = 100  # Normal Events a namespace may post at once
NAMESPACE_QPS = 5.0  # and then per second
NAMESPACE_CACHE = 4096  # namespaces remembered (the plugin's default cacheSize)


class _Bucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at

    def refill(self, now: float, burst: float, rate: float) -> float:
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        return self.tokens


class EventSink(StoreEventSink):
    def __init__(self, store: KubeStore, metrics: OperatorMetrics, *,
                 clock: Callable[[], float] = time.monotonic,
                 namespace_burst: int = NAMESPACE_BURST,
                 namespace_qps: float = NAMESPACE_QPS,
                 namespace_cache: int = NAMESPACE_CACHE) -> None:
        super().__init__(store)
        self._metrics = metrics
        self._clock = clock
        self._recent: dict[tuple[ObjectRef, str, str, str], float] = {}
        self._buckets: dict[ObjectRef, _Bucket] = {}
        self._namespaces: OrderedDict[str, _Bucket] = OrderedDict()  # LRU, newest last
        self._ns_burst = float(namespace_burst)
        self._ns_qps = namespace_qps
        self._ns_cache = max(1, namespace_cache)

    def _namespace_bucket(self, namespace: str, now: float) -> _Bucket:
        bucket = self._namespaces.get(namespace)
        if bucket is None:
            bucket = self._namespaces[namespace] = _Bucket(self._ns_burst, now)
            if len(self._namespaces) > self._ns_cache:
                self._namespaces.popitem(last=False)  # the least recently used
        else:
            self._namespaces.move_to_end(namespace)
        return bucket

    def _allow(self, event: Event) -> str | None:
        """None when the Event may be posted (its tokens taken), else the limit that
        suppresses it: ``duplicate``, ``object`` or ``namespace``."""
        now = self._clock()
        key = (event.ref, event.type, event.reason, event.message)
        last = self._recent.get(key)
        if last is not None and now - last < DEDUPE_SECONDS:
            return "duplicate"
        bucket = self._buckets.get(event.ref)
        if bucket is None:
            bucket = _Bucket(float(BURST), now)
        if bucket.refill(now, BURST, 1.0 / REFILL_SECONDS) < 1:
            self._buckets[event.ref] = bucket
            return "object"
        ns_bucket = None
        if event.type != "Warning":
            ns_bucket = self._namespace_bucket(event.ref.namespace, now)
            if ns_bucket.refill(now, self._ns_burst, self._ns_qps) < 1:
                # Neither the object's token nor the dedupe entry is taken: the same
                # Event may be posted once the namespace has tokens again.
                self._buckets[event.ref] = bucket
                return "namespace"
            ns_bucket.tokens -= 1
        bucket.tokens -= 1
        self._buckets[event.ref] = bucket
        self._recent[key] = now
        if len(self._recent) > MAX_TRACKED:
            for old in sorted(self._recent, key=self._recent.__getitem__)[:MAX_TRACKED // 10]:
                del self._recent[old]
        if len(self._buckets) > MAX_TRACKED:
            for ref in list(self._buckets)[:MAX_TRACKED // 10]:
                del self._buckets[ref]
        return None

    async def emit(self, event: Event) -> None:
        limit = self._allow(event)
        if limit is not None:
            self._metrics.events_suppressed_of(event.type, event.reason, limit).inc()
            log.debug("event suppressed", extra={"resource": str(event.ref),
                                                 "reason": event.reason, "limit": limit})
            return
        self._metrics.events_of(event.type, event.reason).inc()
        log.info("event", extra={"resource": str(event.ref), "reason": event.reason,
                                 "type": event.type})
        await super().emit(event)
