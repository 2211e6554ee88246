"""Wiring and entry point: :func:`run_operator` builds the parts and runs them.

Order of a run: credentials (exit 2 when there is no usable configuration) -> serve
probes -> (leader election: wait for the Lease) -> LIST the custom resources (retried
with backoff while the API is unreachable; ``/readyz`` false) -> start the workers ->
watch -> stop on a signal (exit 0), when the Lease is lost (exit 1) or when a watch stops
(exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.credentials.base import CredentialError, SecretSource
from reconciler.credentials.policy import SourcePolicy
from reconciler.credentials.sources import SourceRouter
from reconciler.engine.world import BasicWorld, Limits
from reconciler.resources import API_VERSION, KIND_OAUTH2, KIND_SMTP, OAuth2Provider
from reconciler.runtimes.leader import LeaderThread, LeaseElector
from reconciler.runtimes.live import live_functions
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator import health
from reconciler.runtimes.operator.controller import Controller
from reconciler.runtimes.operator.events import EventSink
from reconciler.runtimes.operator.index import DependencyIndex
from reconciler.runtimes.operator.settings import FINALIZER, OperatorConfig
from reconciler.runtimes.operator.versionkey import ensure_version_key
from reconciler.runtimes.operator.watching import Reflector
from reconciler.runtimes.publish import Publisher
from reconciler.runtimes.secretcache import KubeSecrets
from reconciler.secret import Secret
from reconciler.stores.base import ObjectRef, StoreError
from reconciler.stores.kube import PLURALS, KubeStore, ref_of, to_stored
from reconciler.stores.kubeapi import (
    ApiError,
    ConfigError,
    Credentials,
    KubeApi,
    describe_server,
    load_credentials,
    resource_path,
)

if TYPE_CHECKING:
    from reconciler.runtimes.probepool import ProbePool

log = logging.getLogger("smtpctl.operator")


def build_world(store: KubeStore, config: OperatorConfig, metrics: OperatorMetrics,
                sources: SecretSource) -> tuple[BasicWorld, Callable[[], Any],
                                                 ProbePool | None]:
    """The engine's world; also the OAuth token manager's getter (the manager, and the
    OAuth stack's imports - httpx, authlib: ~0.16 s - only when a resource needs a
    token) and the probe worker pool (None with ``--probe-workers 0``; its workers start
    at the first test that can use them, ``world.aclose()`` stops them)."""
    live = live_functions(sources, allow_loopback=config.allow_loopback, egress=config.egress)
    probe_fn, pool = live.probe_fn, None
    if config.probe_workers > 0:
        from reconciler.probe.egress import EgressPolicy
        from reconciler.runtimes.probepool import ProbePool as _ProbePool

        # The same egress policy as the in-process probe (live_functions' default).
        policy = config.egress if config.egress is not None else \
            EgressPolicy(allow_loopback=config.allow_loopback)
        pool = _ProbePool(config.probe_workers, policy=policy, fallback=live.probe_fn)
        probe_fn = pool.probe

    async def check_fn(provider: OAuth2Provider) -> Any:
        try:
            result = await live.check_provider_fn(provider)
        except Exception:
            metrics.token_fetches.labels("error").inc()
            raise
        metrics.token_fetches.labels("ok" if getattr(result, "ready", False) else "failed").inc()
        return result

    world = BasicWorld(store=store, resolve_fn=live.resolve_fn, probe_fn=probe_fn,
                       check_provider_fn=check_fn, events=EventSink(store, metrics),
                       limits=Limits(config.concurrency, config.per_host, fair=True),
                       announce_testing=config.announce_testing,
                       close_fn=pool.aclose if pool is not None else None)
    return world, live.token_manager, pool


@dataclass
class Parts:
    creds: Credentials
    api: KubeApi
    store: KubeStore
    secrets: KubeSecrets
    controller: Controller
    probe_pool: ProbePool | None = None


def build_sources(secrets: KubeSecrets, policy: SourcePolicy) -> SourceRouter:
    """Where credentials come from in the operator: ``secretKeyRef`` via the API, and
    ``env:``/``file:`` only as far as the administrator's allow-list (``policy``) says
    (docs/security.md).  Every source hashes secret versions with the Secret cache's key."""
    return SourceRouter(kube=secrets, policy=policy, version_key=secrets.version_key)


def build(config: OperatorConfig, metrics: OperatorMetrics, creds: Credentials, *,
          version_key: bytes, api: KubeApi | None = None) -> Parts:
    """The operator's parts.  ``version_key`` keys the secret-version hashes (passed to
    every secret source; no process-wide state), ``api`` the client to reuse."""
    api = api or KubeApi(creds)
    index = DependencyIndex()
    secrets = KubeSecrets(api, referenced=index.is_referenced, version_key=version_key)
    sources = build_sources(secrets, config.source_policy)
    store = KubeStore(api, namespaces=config.namespaces or None, label_selector=config.selector,
                      finalizer=FINALIZER)
    world, tokens, pool = build_world(store, config, metrics, sources)

    async def token_fn(ns: str, name: str) -> tuple[Secret, float | None, str | None]:
        body = store.cached(ObjectRef(KIND_OAUTH2, ns, name))
        if body is None:
            raise CredentialError("OAuth2ProviderNotFound", f"OAuth2Provider {name!r} not found")
        provider = OAuth2Provider.model_validate(to_stored(body).manifest)
        manager = tokens()
        token: Secret = await manager.token(provider)
        metrics.token_fetches.labels("ok").inc()
        return token, manager.expires_in(provider), manager.provider_version(provider)

    publisher = Publisher(api, store, sources, name=config.publish_secret, token_fn=token_fn,
                          on_write=lambda op: metrics.published.labels(op).inc())
    controller = Controller(store, world, publisher, metrics, index, secrets)
    return Parts(creds, api, store, secrets, controller, pool)


def _make_leader(config: OperatorConfig, creds: Credentials, on_lost: asyncio.Event,
                 metrics: OperatorMetrics) -> LeaderThread:
    def make_elector() -> LeaseElector:
        # Built on the lease thread: its own loop and connection, so renewals never wait
        # behind a busy reconcile loop or bulk status writes.
        lease_api = KubeApi(creds, max_connections=2, timeout=config.renew_deadline,
                            on_request=lambda verb, resource:
                            metrics.kube_requests_of(verb, resource).inc())
        return LeaseElector(
            lease_api, namespace=config.lease_namespace or creds.namespace,
            name=config.lease_name, identity=config.identity,
            lease_duration=config.lease_duration,
            renew_deadline=config.renew_deadline, renew_period=config.renew_period)

    return LeaderThread(make_elector, on_lost=on_lost.set)


def reflectors(config: OperatorConfig, parts: Parts) -> list[Reflector]:
    """One per kind and namespace (all namespaces: one); Secrets only from "now" on.

    The Secret reflectors come first: their start point is taken before any worker can
    read a Secret by name, so no Secret change can fall between a read and the watch."""
    params = {"labelSelector": config.selector} if config.selector else {}
    out = [Reflector(parts.api, resource_path("v1", "secrets", ns),
                     parts.controller.handle_secret, rv_only=True,
                     on_resync=parts.controller.resync_secrets,
                     on_gap=functools.partial(parts.controller.secrets_gap, ns),
                     what="secrets" + (f" in {ns}" if ns else ""))
           for ns in config.namespaces or [None]]  # type: ignore[list-item]
    for kind in (KIND_OAUTH2, KIND_SMTP):
        for ns in config.namespaces or [None]:  # type: ignore[list-item]
            out.append(Reflector(parts.api, resource_path(API_VERSION, PLURALS[kind], ns),
                                 parts.controller.handle, kind=kind, api_version=API_VERSION,
                                 params=params, what=f"{PLURALS[kind]}" + (f" in {ns}" if ns
                                                                          else "")))
    return out


async def _gauges(parts: Parts, refl: list[Reflector], state: health.Readiness,
                  metrics: OperatorMetrics) -> None:
    counted = restarts = unavailable = 0
    for tick in range(10**12):
        state.ready = all(r.connected for r in refl)  # every second
        pool = parts.probe_pool
        if pool is not None:
            metrics.probe_workers.set(len(pool.pids()))
            metrics.probe_worker_tests.inc(pool.offloaded - counted)
            metrics.probe_worker_restarts.inc(pool.restarts - restarts)
            metrics.probe_worker_unavailable.inc(pool.restarts_refused - unavailable)
            counted, restarts, unavailable = pool.offloaded, pool.restarts, pool.restarts_refused
        if tick % 5 == 0:  # every 5 s (smtpctl_resources is counted when scraped)
            parts.secrets.prune()
        await asyncio.sleep(1)


async def _wait_for_lease(leader: LeaderThread, stop: asyncio.Event,
                          state: health.Readiness) -> bool:
    """True once this replica leads; False when asked to stop first.  Meanwhile a standby
    is ready while it can reach the API server (it can take over)."""
    acquire = asyncio.create_task(leader.wait_acquired())
    stopper = asyncio.create_task(stop.wait())
    try:
        for _ in range(10**9):
            done, _ = await asyncio.wait({acquire, stopper}, timeout=0.5,
                                         return_when=asyncio.FIRST_COMPLETED)
            if done:
                break
            state.ready = leader.elector is not None and leader.elector.reachable
    finally:
        stopper.cancel()
    if not acquire.done():
        acquire.cancel()
        return False
    return True


async def _run_watches(config: OperatorConfig, parts: Parts, stop: asyncio.Event,
                       lost: asyncio.Event | None, state: health.Readiness,
                       metrics: OperatorMetrics) -> int:
    """List, start the workers, watch; until stopped (0), the Lease is lost or a watch
    stops (1)."""
    refl = reflectors(config, parts)
    started = time.monotonic()
    # The Secret watches' start point, then the custom resources (workers start as they
    # arrive and read referenced Secrets by name), then every watch.
    for r in refl:
        await r.list()
    log.info("primed cache", extra={"objects": len(parts.store.cached_objects()),
                                    "seconds": round(time.monotonic() - started, 3)})
    tasks = {asyncio.create_task(r.run(), name=f"watch {r.what}") for r in refl}
    stopper = asyncio.create_task(stop.wait(), name="stop")
    waiters: set[asyncio.Task[Any]] = {*tasks, stopper}
    if lost is not None:
        waiters.add(asyncio.create_task(lost.wait(), name="lease"))
    gauges = asyncio.create_task(_gauges(parts, refl, state, metrics))
    state.ready = True
    code = 0
    try:
        done, _pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        names = {t.get_name() for t in done}
        log.info("stopping", extra={"why": sorted(names)})
        if "lease" in names:
            code = 1  # leadership lost: stop at once
        elif "stop" not in names:
            code = 1  # a watch stopped: never run blind
            for t in done & tasks:
                exc = t.exception() if not t.cancelled() else None
                log.error("watch stopped", extra={"watch": t.get_name(),
                                                  "error": type(exc).__name__ if exc else ""})
    finally:
        state.ready = False
        gauges.cancel()
        for t in waiters:
            t.cancel()
        await asyncio.gather(*waiters, gauges, return_exceptions=True)
        await _bounded(parts.controller.stop(), 15, "stopping the workers")
    return code


async def _bounded(coro: Coroutine[Any, Any, None], seconds: float, what: str) -> None:
    """Run a shutdown step, but never hang the exit on it."""
    task = asyncio.create_task(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning(f"{what} took more than {seconds:.0f}s; exiting anyway")


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which event loop runs the operator (logged at start)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def run_operator(config: OperatorConfig, *, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set or a signal arrives (0), or leadership is lost (1)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics = OperatorMetrics()
    state = health.Readiness()
    try:
        creds = load_credentials(config.kubeconfig, config.context)
    except ConfigError as exc:
        log.error(f"cannot configure the Kubernetes client: {exc}")
        return 2
    log.info("connecting", extra={"server": describe_server(creds), "via": creds.source,
                                  "loop": loop_kind(loop)})
    api = KubeApi(creds, on_request=lambda verb, resource:
                  metrics.kube_requests_of(verb, resource).inc())
    parts: Parts | None = None
    runners = await health.serve(config, metrics, state)
    leader: LeaderThread | None = None
    lost = asyncio.Event()
    code = 0
    try:
        if config.leader_election:
            leader = _make_leader(config, creds, lost, metrics)
            leader.start()
            if not await _wait_for_lease(leader, stop, state):
                return 0
            metrics.leader.set(1)
        state.ready = False
        key = config.version_key or await ensure_version_key(
            api, config.lease_namespace or creds.namespace)
        parts = build(config, metrics, creds, version_key=key, api=api)
        code = await _run_watches(config, parts, stop, lost if leader is not None else None,
                                  state, metrics)
    finally:
        if parts is not None:
            await _bounded(parts.controller.stop(), 15, "stopping the workers")
            if parts.probe_pool is not None:  # after the passes: none is testing now
                await _bounded(parts.probe_pool.aclose(), 15, "stopping the probe workers")
        if leader is not None:  # releases the Lease on a clean stop (not after losing it)
            await asyncio.to_thread(leader.stop, release=code == 0)
        metrics.leader.set(0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for runner in runners:
            await runner.cleanup()
        await api.close()
    return code


async def remove_finalizers(config: OperatorConfig) -> int:
    """``smtpctl operator --remove-finalizers``: drop our finalizer from every ExternalSmtp
    in scope (with preconditions; other finalizers stay) and exit.  For uninstalling when
    the operator no longer runs, so the CRDs can be deleted without objects stuck in
    Terminating.  Returns the exit code (0, or 1 when an object could not be updated)."""
    from reconciler.runtimes.operator import finalizers

    try:
        creds = load_credentials(config.kubeconfig, config.context)
    except ConfigError as exc:
        log.error(f"cannot configure the Kubernetes client: {exc}")
        return 2
    api = KubeApi(creds)
    store = KubeStore(api, namespaces=config.namespaces or None, label_selector=config.selector)
    failed = 0
    try:
        try:
            await store.prime()
        except ApiError as exc:
            log.error(f"cannot list ExternalSmtps on {describe_server(creds)}: "
                      f"{exc.code or ''} {exc.reason}")
            return 1
        for body in store.cached_objects(KIND_SMTP):
            ref = ref_of(body)
            if not finalizers.has_finalizer(body):
                continue
            try:
                await finalizers.remove_finalizer(store, ref)
                log.info("finalizer removed", extra={"resource": str(ref)})
            except (ApiError, StoreError) as exc:
                failed += 1
                log.error("cannot remove the finalizer", extra={"resource": str(ref),
                                                                 "error": str(exc)})
    finally:
        await api.close()
    return 1 if failed else 0
