"""Wiring and entry point: :func:`run_operator` builds the parts and runs them.

Order of a run: serve probes -> (leader election: wait for the Lease) -> prime the
store's cache and the Secret cache -> start the workers from the cache -> watch -> stop
on a signal (exit 0), when the Lease is lost (exit 1) or when the watches stop (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

from reconciler.credentials import sources as sources_mod
from reconciler.credentials.base import CredentialError, SecretSource
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink, live_functions
from reconciler.resources import KIND_OAUTH2, KIND_SMTP, OAuth2Provider
from reconciler.runtimes.leader import LeaderThread, LeaseElector
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator import health, watching
from reconciler.runtimes.operator.controller import Controller
from reconciler.runtimes.operator.index import DependencyIndex
from reconciler.runtimes.operator.settings import OperatorConfig
from reconciler.runtimes.publish import Publisher
from reconciler.runtimes.secretcache import CachedKubeSecretSource
from reconciler.secret import Secret
from reconciler.stores.base import Event, ObjectRef
from reconciler.stores.kube import KubeStore, to_stored
from reconciler.stores.kubeapi import ClusterConfig, KubeApi, load_config, resource_path

log = logging.getLogger("smtpctl.operator")


class MetricsSink(StoreEventSink):
    """Events to the store (core/v1 Events), counted and logged."""

    def __init__(self, store: KubeStore, metrics: OperatorMetrics) -> None:
        super().__init__(store)
        self._metrics = metrics

    async def emit(self, event: Event) -> None:
        self._metrics.events.labels(event.type, event.reason).inc()
        log.info("event", extra={"resource": str(event.ref), "reason": event.reason,
                                 "type": event.type})
        await super().emit(event)


def build_world(store: KubeStore, config: OperatorConfig, metrics: OperatorMetrics,
                sources: SecretSource) -> tuple[BasicWorld, Any]:
    live = live_functions(sources, allow_loopback=config.allow_loopback)

    async def check_fn(provider: OAuth2Provider) -> Any:
        try:
            result = await live.check_provider_fn(provider)
        except Exception:
            metrics.token_fetches.labels("error").inc()
            raise
        metrics.token_fetches.labels("ok" if getattr(result, "ready", False) else "failed").inc()
        return result

    world = BasicWorld(store=store, resolve_fn=live.resolve_fn, probe_fn=live.probe_fn,
                       check_provider_fn=check_fn, events=MetricsSink(store, metrics),
                       limits=Limits(config.concurrency, config.per_host),
                       announce_testing=config.announce_testing)
    return world, live.tokens


@dataclass
class Parts:
    cluster: ClusterConfig
    api: KubeApi
    store: KubeStore
    secret_cache: CachedKubeSecretSource
    controller: Controller


def build(config: OperatorConfig, metrics: OperatorMetrics) -> Parts:
    cluster = load_config(config.kubeconfig, config.context)
    api = KubeApi(cluster)
    sources = sources_mod.default_sources(
        kubeconfig=config.kubeconfig, context=config.context,
        in_cluster=None if config.kubeconfig is None else False)
    index = DependencyIndex()
    fallback = sources_mod.KubeSecretSource(
        sources_mod.kube_client_factory(config.kubeconfig, config.context))
    secret_cache = CachedKubeSecretSource(fallback, wanted=index.is_referenced)
    sources.kube = secret_cache
    store = KubeStore(api, namespaces=config.namespaces or None, label_selector=config.selector)
    world, tokens = build_world(store, config, metrics, sources)

    async def token_fn(ns: str, name: str) -> tuple[Secret, float | None]:
        body = store.cached(ObjectRef(KIND_OAUTH2, ns, name))
        if body is None:
            raise CredentialError("OAuth2ProviderNotFound", f"OAuth2Provider {name!r} not found")
        provider = OAuth2Provider.model_validate(to_stored(body).manifest)
        token: Secret = await tokens.token(provider)
        metrics.token_fetches.labels("ok").inc()
        return token, tokens.expires_in(provider)

    publisher = Publisher(api, store, sources, name=config.publish_secret, token_fn=token_fn,
                          on_write=lambda op: metrics.published.labels(op).inc())
    controller = Controller(store, world, publisher, metrics, index, secret_cache)
    return Parts(cluster, api, store, secret_cache, controller)


def _make_leader(config: OperatorConfig, cluster: ClusterConfig,
                 on_lost: asyncio.Event) -> LeaderThread:
    def make_elector() -> LeaseElector:
        # Built on the lease thread: its own loop and connection, so renewals never wait
        # behind a busy reconcile loop or bulk status writes.
        lease_api = KubeApi(cluster, max_connections=2, timeout=config.renew_deadline)
        return LeaseElector(
            lease_api, namespace=config.lease_namespace or cluster.namespace,
            name=config.lease_name, identity=config.identity,
            lease_duration=config.lease_duration,
            renew_deadline=config.renew_deadline, renew_period=config.renew_period)

    return LeaderThread(make_elector, on_lost=on_lost.set)


async def _prime(config: OperatorConfig, parts: Parts) -> None:
    """Fill the caches with one LIST per kind (and of Secrets), then start the workers."""
    started = time.monotonic()
    primed = await parts.store.prime()
    log.info("primed cache", extra={"objects": primed,
                                    "seconds": round(time.monotonic() - started, 3)})
    parts.controller.index_all()
    for ns in config.namespaces or [None]:  # type: ignore[list-item]
        items, _ = await parts.api.list_all(resource_path("v1", "secrets", ns))
        for item in items:
            item.setdefault("metadata", {}).setdefault("namespace", ns)
            parts.secret_cache.observe(item)
        del items
    for kind in (KIND_OAUTH2, KIND_SMTP):
        for body in parts.store.cached_objects(kind):
            parts.controller.handle(body, None)


async def _gauges(controller: Controller) -> None:
    while True:
        controller.refresh_condition_gauges()
        controller.metrics.api_requests.set(controller.store.api.requests)
        await asyncio.sleep(5)


async def _wait_for_lease(leader: LeaderThread, stop: asyncio.Event) -> bool:
    """True once this replica leads; False when asked to stop first."""
    acquire = asyncio.create_task(leader.wait_acquired())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not acquire.done():
        acquire.cancel()
        return False
    return True


async def _run_watches(config: OperatorConfig, parts: Parts, stop: asyncio.Event,
                       lost: asyncio.Event | None) -> int:
    """Watch until stopped (0) or the Lease is lost (1)."""
    import kopf

    loop = asyncio.get_running_loop()
    reg = watching.registry(parts.controller, parts.cluster, config)
    kopf_stop: asyncio.Future[None] = loop.create_future()
    kopf_task = asyncio.create_task(kopf.operator(
        registry=reg, standalone=True, clusterwide=not config.namespaces,
        namespaces=config.namespaces, stop_flag=kopf_stop))
    waiters: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait()), kopf_task}
    if lost is not None:
        waiters.add(asyncio.create_task(lost.wait(), name="lease"))
    gauges = asyncio.create_task(_gauges(parts.controller))
    code = 0
    try:
        done, _pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if any(t.get_name() == "lease" for t in done):
            code = 1  # leadership lost: stop at once
        await parts.controller.stop()
    finally:
        gauges.cancel()
        if not kopf_stop.done():
            kopf_stop.set_result(None)
        for t in waiters:
            if t is not kopf_task:
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(kopf_task, 10)
    return code


async def run_operator(config: OperatorConfig, *, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set or a signal arrives (0), or leadership is lost (1)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics = OperatorMetrics()
    state = health.Readiness()
    parts = build(config, metrics)
    runners = await health.serve(config, metrics, state)
    leader: LeaderThread | None = None
    lost = asyncio.Event()
    code = 0
    try:
        if config.leader_election:
            leader = _make_leader(config, parts.cluster, lost)
            leader.start()
            state.ready = True  # a standby is a healthy, ready replica
            if not await _wait_for_lease(leader, stop):
                return 0
            metrics.leader.set(1)
        state.ready = False
        await _prime(config, parts)
        state.ready = True
        code = await _run_watches(config, parts, stop, lost if leader is not None else None)
    finally:
        await parts.controller.stop()
        if leader is not None:  # releases the Lease on a clean stop (not after losing it)
            await asyncio.to_thread(leader.stop, release=code == 0)
        metrics.leader.set(0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for runner in runners:
            await runner.cleanup()
        await parts.api.close()
    return code
