"""Watch events in, reconcile passes out: the operator's controller.

:meth:`Controller.handle` takes ExternalSmtp/OAuth2Provider events (and the primed
objects), keeps the store's cache and the dependency index current, starts or wakes the
resource's worker and starts the finalizer work of a resource being deleted.
:meth:`Controller.handle_secret` takes Secret events and wakes the resources that use
the Secret.  Our own status writes and finalizer patches do not wake a worker (they do
not change the generation); a selected relay that lost our finalizer does (the pass puts
it back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from reconciler.engine.reconcile import ReconcileAction, ReconcileResult, reconcile
from reconciler.engine.selection import select_scope
from reconciler.engine.world import BasicWorld
from reconciler.resources import KIND_OAUTH2, KIND_SMTP
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator import finalizers
from reconciler.runtimes.operator.index import DependencyIndex
from reconciler.runtimes.operator.settings import IDLE_REQUEUE
from reconciler.runtimes.operator.watching import Backoff
from reconciler.runtimes.operator.workers import WorkerPool
from reconciler.runtimes.publish import Publisher
from reconciler.runtimes.secretcache import KubeSecrets
from reconciler.stores.base import ObjectRef
from reconciler.stores.kube import KubeStore, ref_of
from reconciler.stores.kubetypes import (
    KubeObject,
    condition,
    conditions_of,
    is_deleting,
    meta_of,
    name_of,
    namespace_of,
)

if TYPE_CHECKING:
    from reconciler.engine.active import HealthSample

log = logging.getLogger("smtpctl.operator")
RESYNC_ATTEMPTS = 10  # re-reads of stale Secrets after a watch gap (0.5 s .. 30 s apart)


def _ready(body: KubeObject | None) -> str:
    c = condition(body, "Ready")
    return f"{c.get('status')}/{c.get('observedGeneration')}" if c else ""


def _ready_reason(status: dict[str, Any] | None) -> str:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason"))
    return ""


class Controller:
    """Workers, indexes and finalizers; fed by watch events (:meth:`handle`)."""

    def __init__(self, store: KubeStore, world: BasicWorld, publisher: Publisher,
                 metrics: OperatorMetrics, index: DependencyIndex,
                 secrets: KubeSecrets) -> None:
        self.store = store
        self.world = world
        self.publisher = publisher
        self.metrics = metrics
        metrics.relay_health = self.relay_health
        metrics.resource_conditions = self.condition_counts
        self.index = index
        self.secrets = secrets
        self.pool = WorkerPool(self._pass, metrics,
                               slots=max(64, world.limits.concurrency * 4))
        self._deleting: set[ObjectRef] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        secrets.on_changed = lambda key: self._wake_secret_users(*key, "RESYNC")

    @property
    def stopped(self) -> bool:
        return self.pool.stopped

    def index_all(self) -> None:
        """Build the Secret/provider indexes from the store's cache (before any worker)."""
        for body in self.store.cached_objects():
            self.index.update(ref_of(body), body)

    # --- events ------------------------------------------------------------------------
    def handle(self, body: KubeObject, event_type: str | None) -> None:
        """An ExternalSmtp/OAuth2Provider event (or a primed object: ``event_type`` None)."""
        if self.stopped:
            return
        ref = ref_of(body)
        if event_type == "DELETED":
            self.pool.stop(ref)
            self.index.update(ref, None)
            self.store.forget(ref)
            self._spawn(self._after_removal(ref))
            return
        before = self.store.cached(ref)
        if not self.store.observe(body, listed=event_type is None):
            return
        # The cached body: the store keeps an unchanged spec as the same object, so the
        # index skips our own status and memo writes' events (most events) cheaply.
        self.index.update(ref, self.store.cached(ref) or body)
        if is_deleting(body):
            if finalizers.has_finalizer(body) and ref not in self._deleting:
                self._deleting.add(ref)
                self.pool.stop(ref)
                self._spawn(self._finalize(ref))
            return
        self.pool.ensure(ref, int(meta_of(body).get("generation") or 0))
        if _reconcile_request(before) != _reconcile_request(body):
            self.pool.wake([ref])  # `smtpctl reconcile NAME --kubeconfig`: re-verify now
        elif event_type is not None and self.store.needs_finalizer(ref, body):
            self.pool.wake([ref])  # the selected relay lost our finalizer: the pass re-adds it
        if ref.kind == KIND_OAUTH2 and _ready(before) != _ready(body):
            self.pool.wake(self.index.provider_users(ref.namespace, ref.name))

    def handle_secret(self, body: KubeObject, event_type: str | None) -> None:
        """A Secret changed (or appeared, or went away): wake the resources using it."""
        if self.stopped or event_type is None:
            return
        # Into the cache before waking anyone (they will read it); unreferenced: dropped.
        if not self.secrets.observe(body, event_type):
            return
        self._wake_secret_users(namespace_of(body), name_of(body), event_type)

    def secrets_gap(self, namespace: str | None) -> None:
        """The Secret watch of ``namespace`` (None: all) broke: changes may be missed until
        it is back, so the kept Secrets there are re-read before their next use."""
        self.secrets.mark_stale(namespace)

    def resync_secrets(self) -> None:
        """The Secret watch is back after a gap: re-read the stale Secrets (users of changed
        ones are woken by ``secrets.on_changed``); reads that fail are retried with backoff
        (bounded), and stay stale meanwhile, so a pass re-reads them itself."""
        async def run() -> None:
            backoff = Backoff()
            for _ in range(RESYNC_ATTEMPTS):
                failed = await self.secrets.resync()
                if not failed or self.stopped:
                    return
                await asyncio.sleep(backoff.next())
            log.warning("cannot re-read Secrets after a watch gap; their next use re-reads "
                        "them", extra={"secrets": len(failed)})

        self._spawn(run())

    def _wake_secret_users(self, namespace: str, name: str, event_type: str) -> None:
        deps = self.index.secret_users(namespace, name)
        for ref in list(deps):
            if ref.kind == KIND_OAUTH2:
                deps |= self.index.provider_users(ref.namespace, ref.name)
        if deps:
            log.info("referenced Secret changed", extra={
                "secret": f"{namespace}/{name}", "event": event_type,
                "dependents": len(deps)})
        self.pool.wake(deps)

    # --- passes ------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pass(self, ref: ObjectRef) -> float | None:
        """One reconcile; the delay until the next (None: the object is gone)."""
        result = await reconcile(ref, self.world)  # by key: it reads the object itself
        if result.action == ReconcileAction.GONE:
            return None
        if self.store.needs_finalizer(ref, self.store.cached(ref)):
            # A selected relay without our finalizer (a user removed it; or an older
            # operator selected it and stopped before its finalizer PATCH).  The store adds
            # it before any write that selects a relay; this is the repair, under the pass
            # slots.
            await finalizers.add_finalizer(self.store, ref)
        self._observe(result)
        delay = result.requeue_after if result.requeue_after is not None else IDLE_REQUEUE
        if ref.kind == KIND_SMTP:
            await self.publisher.sync(ref.namespace)
            in_use = self.publisher.active_in(ref.namespace)
            refresh = self.publisher.refresh_in(ref.namespace)
            if refresh is not None and in_use is not None and \
                    meta_of(in_use).get("name") == ref.name:
                delay = min(delay, refresh)  # the published token, before it expires
        return delay

    def _observe(self, result: ReconcileResult) -> None:
        self.metrics.reconciles_of(result.ref.kind, result.action).inc()
        v = result.verdict
        if result.tested and v is not None:
            self.metrics.tests_of("passed" if v.passed else "failed", v.reason).inc()
            for stage, seconds in v.stage_seconds.items():
                self.metrics.test_duration_of(stage).observe(seconds)
        gen = (result.status or {}).get("observedGeneration")
        log.info("reconciled", extra={
            "resource": str(result.ref), "generation": gen, "action": result.action,
            "reason": _ready_reason(result.status), "requeueAfter": result.requeue_after})

    def condition_counts(self) -> dict[tuple[str, str, str], int]:
        """Cached resources by (kind, condition type, status), for ``smtpctl_resources``
        (computed when ``/metrics`` is scraped)."""
        counts: dict[tuple[str, str, str], int] = {}
        for body in self.store.cached_objects():
            for c in conditions_of(body):
                key = (str(body.get("kind")), str(c.get("type")), str(c.get("status")))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def relay_health(self) -> Iterator[HealthSample]:
        """The relays' health samples from the active records (engine/active.py), for the
        ``smtpctl_active_relay_*`` metrics (computed when ``/metrics`` is scraped)."""
        from reconciler.engine.active import health_sample

        for body in self.store.cached_objects(KIND_SMTP):
            meta = meta_of(body)
            sample = health_sample(str(meta.get("namespace")), str(meta.get("name")),
                                   body.get("status") or {})
            if sample is not None:
                yield sample

    # --- deletion ------------------------------------------------------------------------
    async def _after_removal(self, ref: ObjectRef) -> None:
        if ref.kind == KIND_SMTP:
            await select_scope(ref.namespace, self.world)
            await self.publisher.sync(ref.namespace)
        else:
            self.pool.wake(self.index.provider_users(ref.namespace, ref.name))

    async def _finalize(self, ref: ObjectRef) -> None:
        try:
            await finalizers.finalize(self.store, self.world, self.publisher, ref)
        finally:
            self._deleting.discard(ref)

    async def stop(self) -> None:
        self.pool.stopped = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await self.pool.stop_all()
        await asyncio.gather(*tasks, return_exceptions=True)


def _reconcile_request(body: KubeObject | None) -> str | None:
    """The value of the re-verify-now annotation (the engine acts on it)."""
    from reconciler.engine.reconcile import RECONCILE_REQUEST

    value = (meta_of(body).get("annotations") or {}).get(RECONCILE_REQUEST) if body else None
    return str(value) if value is not None else None
