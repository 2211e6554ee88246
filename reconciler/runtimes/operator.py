"""The Kubernetes operator: the engine driven by kopf's watch streams.

kopf supplies the low-level pieces - API discovery, list+watch streams that re-list after
``410 Gone``, reconnects, retries, login - through plain ``@kopf.on.event`` handlers,
which keep no state of their own and write nothing to the objects.  Our engine stays in
charge of everything else:

* **One worker per resource** (an asyncio task): it calls ``reconcile``, sleeps until
  ``requeue_after`` (jittered re-verification, backoff) and is woken early by a new
  generation of the resource, by a change to a Secret it references (an index from
  Secret to dependents), or by a change of readiness of its OAuth2Provider.  Status and
  annotation writes of our own do not wake it (they do not change the generation).
* **The store** (:class:`reconciler.stores.kube.KubeStore`) reads from a cache fed by the
  watches and primed by one LIST at start, and writes the status subresource with
  optimistic concurrency.  A restarted operator therefore catches up with unchanged Ready
  resources without a single connection test or write: the digest survives in the
  ``smtp.reconciler.dev/last-test`` annotation.
* **Finalizer** ``smtp.reconciler.dev/finalizer`` on each ExternalSmtp: on deletion the
  worker stops, selection in the namespace is recomputed (failover to the next Ready
  requested relay), the published Secret follows, then the finalizer is removed.
* **Leader election** (:mod:`reconciler.runtimes.leader`): nothing is watched or written
  before this replica holds the Lease; when it loses the Lease it stops at once and the
  process exits with status 1 (its Deployment restarts it as a standby).
* **Sharding**: ``--namespace`` (repeatable) and ``--selector`` (a label selector, sent to
  the API server) split a fleet between operator Deployments.  Selection is per
  namespace, so a label shard must keep each namespace's relays together (document
  in docs/operator.md).
* **Observability**: Kubernetes Events from the engine's transitions, prometheus metrics
  (:mod:`reconciler.runtimes.metrics`), ``/healthz`` and ``/readyz``, JSON logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.credentials.base import SecretSource
from reconciler.credentials.policy import SourcePolicy
from reconciler.engine.reconcile import ReconcileResult, reconcile
from reconciler.engine.selection import select_scope
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.probe.egress import EgressPolicy
from reconciler.resources import (
    API_GROUP,
    KIND_OAUTH2,
    KIND_SMTP,
    OAuth2Provider,
)
from reconciler.runtimes.leader import LeaderThread, LeaseElector
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.publish import Publisher
from reconciler.runtimes.secretcache import CachedKubeSecretSource
from reconciler.stores.base import Event, ObjectRef, StoreError
from reconciler.stores.kube import KubeStore, ref_of, to_stored
from reconciler.stores.kubeapi import ApiError, ClusterConfig, KubeApi, load_config, resource_path

log = logging.getLogger("smtpctl.operator")

FINALIZER = "smtp.reconciler.dev/finalizer"
VERSION = "v1alpha1"
IDLE_REQUEUE = 3600.0  # "only a change can help": still look again hourly
ERROR_BACKOFF = 5.0


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    selector: str | None = None
    publish_secret: str = "smtp-active-relay"  # noqa: S105 - a Secret name
    leader_election: bool = True
    lease_name: str = "smtpctl-operator"
    lease_namespace: str | None = None
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    renew_period: float = 2.0
    health_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet
    health_port: int = 8080
    metrics_port: int = 9090
    concurrency: int = 16
    per_host: int = 4
    announce_testing: bool = True
    # In a pod, loopback is the pod itself (sidecars): refused unless asked for (tests).
    allow_loopback: bool = False
    # The tenant boundary (docs/security.md): own-namespace Secrets only, unless a cluster
    # administrator allow-listed variables or directories.  Built by security_settings().
    source_policy: SourcePolicy = field(default_factory=SourcePolicy.operator)
    # Where SMTP probes and OAuth endpoints may connect (None: default deny list, loopback
    # as allow_loopback says).
    egress: EgressPolicy | None = None


@dataclass
class _Worker:
    ref: ObjectRef
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    generation: int = 0


def _secret_names(body: dict[str, Any]) -> set[str]:
    """Names of Secrets (same namespace) a resource's spec references."""
    spec = body.get("spec") or {}
    refs = [spec.get("passwordFrom"), spec.get("clientSecretFrom"), spec.get("refreshTokenFrom"),
            (spec.get("tls") or {}).get("caBundleFrom")]
    out = set()
    for ref in refs:
        if isinstance(ref, dict):
            skr = ref.get("secretKeyRef")
            if isinstance(skr, dict) and skr.get("name"):
                out.add(str(skr["name"]))
    return out


def _ready(body: dict[str, Any] | None) -> str:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return f"{c.get('status')}/{c.get('observedGeneration')}"
    return ""


class Controller:
    """Workers, indexes and finalizers; fed by watch events (:meth:`handle`)."""

    def __init__(self, store: KubeStore, world: BasicWorld, publisher: Publisher,
                 metrics: OperatorMetrics) -> None:
        self.store = store
        self.world = world
        self.publisher = publisher
        self.metrics = metrics
        self.workers: dict[ObjectRef, _Worker] = {}
        self._secret_deps: dict[tuple[str, str], set[ObjectRef]] = {}
        self._provider_deps: dict[tuple[str, str], set[ObjectRef]] = {}
        self._indexed: dict[ObjectRef, list[tuple[str, tuple[str, str]]]] = {}
        self._busy = 0
        self._deleting: set[ObjectRef] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.secret_cache: CachedKubeSecretSource | None = None
        # Workers that may run a pass at once.  Without it, 10,000 workers starting
        # together would each queue an announce write before any test could commit.
        self._slots = asyncio.Semaphore(max(64, world.limits.concurrency * 4))

    def index_all(self) -> None:
        """Build the Secret/provider indexes from the store's cache (before any worker)."""
        for body in self.store.cached_objects():
            self._index(ref_of(body), body)

    # --- indexes ---------------------------------------------------------------------
    def _index(self, ref: ObjectRef, body: dict[str, Any] | None) -> None:
        for table, key in self._indexed.pop(ref, []):
            deps = (self._secret_deps if table == "s" else self._provider_deps).get(key)
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    (self._secret_deps if table == "s" else self._provider_deps).pop(key, None)
        if body is None:
            return
        entries: list[tuple[str, tuple[str, str]]] = []
        for name in _secret_names(body):
            entries.append(("s", (ref.namespace, name)))
        prov = ((body.get("spec") or {}).get("oauth2ProviderRef") or {}).get("name")
        if ref.kind == KIND_SMTP and prov:
            entries.append(("p", (ref.namespace, str(prov))))
        for table, key in entries:
            (self._secret_deps if table == "s" else self._provider_deps).setdefault(
                key, set()).add(ref)
        self._indexed[ref] = entries

    def dependents_of_secret(self, namespace: str, name: str) -> set[ObjectRef]:
        return set(self._secret_deps.get((namespace, name), set()))

    # --- events ------------------------------------------------------------------------
    def handle(self, body: dict[str, Any], event_type: str | None) -> None:
        """An ExternalSmtp/OAuth2Provider event (or a primed object: ``event_type`` None)."""
        if self.stopped:
            return
        ref = ref_of(body)
        if event_type == "DELETED":
            self._stop_worker(ref)
            self._index(ref, None)
            self.store.forget(ref)
            self._spawn(self._after_removal(ref))
            return
        before = self.store.cached(ref)
        if not self.store.observe(body):
            return
        meta = body.get("metadata") or {}
        self._index(ref, body)
        if meta.get("deletionTimestamp"):
            if FINALIZER in (meta.get("finalizers") or []) and ref not in self._deleting:
                self._deleting.add(ref)
                self._stop_worker(ref)
                self._spawn(self._finalize(ref))
            return
        gen = int(meta.get("generation") or 0)
        worker = self.workers.get(ref)
        if worker is None:
            self._start_worker(ref, gen)
        elif gen != worker.generation:
            worker.generation = gen
            worker.wake.set()
        if ref.kind == KIND_OAUTH2 and _ready(before) != _ready(body):
            self._wake_all(self._provider_deps.get((ref.namespace, ref.name), set()))

    def handle_secret(self, body: dict[str, Any], event_type: str | None) -> None:
        """A Secret changed (or appeared, or went away): wake the resources using it."""
        if self.stopped:
            return
        if self.secret_cache is not None:  # before waking anyone: they will read it
            self.secret_cache.observe(body, deleted=event_type == "DELETED")
        if event_type is None:  # initial listing: nothing changed
            return
        meta = body.get("metadata") or {}
        deps = self.dependents_of_secret(str(meta.get("namespace")), str(meta.get("name")))
        for ref in list(deps):
            if ref.kind == KIND_OAUTH2:
                deps |= self._provider_deps.get((ref.namespace, ref.name), set())
        if deps:
            log.info("referenced Secret changed", extra={
                "secret": f"{meta.get('namespace')}/{meta.get('name')}", "event": event_type,
                "dependents": len(deps)})
        self._wake_all(deps)

    def _wake_all(self, refs: Iterable[ObjectRef]) -> None:
        for ref in refs:
            w = self.workers.get(ref)
            if w is not None:
                w.wake.set()

    # --- workers -----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_worker(self, ref: ObjectRef, generation: int) -> None:
        w = _Worker(ref, generation=generation)
        w.task = asyncio.get_running_loop().create_task(self._run(w), name=f"worker {ref}")
        self.workers[ref] = w
        self.metrics.workers.set(len(self.workers))

    def _stop_worker(self, ref: ObjectRef) -> None:
        w = self.workers.pop(ref, None)
        if w is not None and w.task is not None:
            w.task.cancel()
        self.metrics.workers.set(len(self.workers))

    async def _run(self, w: _Worker) -> None:
        ref = w.ref
        while not self.stopped:
            w.wake.clear()
            delay: float | None = ERROR_BACKOFF
            self._busy += 1
            self.metrics.queue_depth.set(self._busy)
            try:
                async with self._slots:
                    delay = await self._pass(ref)
            except asyncio.CancelledError:
                raise
            except (StoreError, ApiError) as exc:
                log.warning("reconcile failed; retrying", extra={
                    "resource": str(ref), "error": str(exc)})
            except Exception as exc:  # one bad resource must not stop the others
                log.exception("reconcile crashed; retrying", extra={
                    "resource": str(ref), "error": type(exc).__name__})
            finally:
                self._busy -= 1
                self.metrics.queue_depth.set(self._busy)
            if delay is None:  # gone: a later event for the same name starts a new worker
                if self.workers.get(ref) is w:
                    del self.workers[ref]
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.wake.wait(), max(0.0, delay))

    async def _pass(self, ref: ObjectRef) -> float | None:
        """One reconcile; the delay until the next (None: the object is gone)."""
        body = self.store.cached(ref)
        if ref.kind == KIND_SMTP and body is not None and \
                FINALIZER not in (body.get("metadata") or {}).get("finalizers", []):
            # Here, under the pass slots, not at the event: 10,000 new resources must not
            # become 10,000 concurrent PATCHes.
            await self._add_finalizer(ref, list(body["metadata"].get("finalizers") or []))
        obj = await self.store.get(ref)
        if obj is None:
            return None
        result = await reconcile(obj, self.world)
        self._observe(result)
        if ref.kind == KIND_SMTP:
            await self.publisher.sync(ref.namespace)
        return result.requeue_after if result.requeue_after is not None else IDLE_REQUEUE

    def _observe(self, result: ReconcileResult) -> None:
        self.metrics.reconciles.labels(result.ref.kind, result.action).inc()
        v = result.verdict
        if result.tested and v is not None:
            self.metrics.tests.labels("passed" if v.passed else "failed", v.reason).inc()
            for stage, seconds in v.stage_seconds.items():
                self.metrics.test_duration.labels(stage).observe(seconds)
        gen = (result.status or {}).get("observedGeneration")
        log.info("reconciled", extra={
            "resource": str(result.ref), "generation": gen, "action": result.action,
            "reason": _ready_reason(result.status), "requeueAfter": result.requeue_after})

    def refresh_condition_gauges(self) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for body in self.store.cached_objects():
            for c in (body.get("status") or {}).get("conditions") or []:
                key = (str(body.get("kind")), str(c.get("type")), str(c.get("status")))
                counts[key] = counts.get(key, 0) + 1
        self.metrics.resources.clear()
        for (kind, ctype, status), n in counts.items():
            self.metrics.resources.labels(kind, ctype, status).set(n)

    # --- finalizer and deletion ----------------------------------------------------------
    async def _add_finalizer(self, ref: ObjectRef, current: list[str]) -> None:
        try:
            body = await self.store.api.patch(
                self.store._path(ref), {"metadata": {"finalizers": [*current, FINALIZER]}})
            self.store.observe(body)
        except ApiError as exc:
            if exc.code != 404:
                log.warning("could not add finalizer", extra={"resource": str(ref),
                                                              "code": exc.code})

    async def _after_removal(self, ref: ObjectRef) -> None:
        if ref.kind == KIND_SMTP:
            await select_scope(ref.namespace, self.world)
            await self.publisher.sync(ref.namespace)
        else:
            self._wake_all(self._provider_deps.get((ref.namespace, ref.name), set()))

    async def _finalize(self, ref: ObjectRef) -> None:
        """Release selection (failover), update the published Secret, drop the finalizer."""
        try:
            now = self.world.clock()
            await self.world.events.emit(Event(ref, "Normal", "Deleting",
                                               f"{ref.kind} {ref.name!r} is being deleted; "
                                               "releasing its selection",
                                               _rfc3339(now)))
            await select_scope(ref.namespace, self.world)  # deleting objects do not take part
            await self.publisher.sync(ref.namespace)
            for _ in range(5):
                body = self.store.cached(ref) or await self.store.api.get(self.store._path(ref))
                rest = [f for f in (body.get("metadata") or {}).get("finalizers") or []
                        if f != FINALIZER]
                patch = {"metadata": {"finalizers": rest or None,
                                      "resourceVersion": body["metadata"]["resourceVersion"]}}
                try:
                    await self.store.api.patch(self.store._path(ref), patch)
                    break
                except ApiError as exc:
                    if exc.code == 404:
                        break
                    if exc.code != 409:
                        raise
                    self.store.forget(ref)
        except ApiError as exc:
            if exc.code != 404:
                log.warning("finalizer cleanup failed", extra={"resource": str(ref),
                                                               "code": exc.code})
        finally:
            self._deleting.discard(ref)

    async def stop(self) -> None:
        self.stopped = True
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        tasks += list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _ready_reason(status: dict[str, Any] | None) -> str:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason"))
    return ""


# --- wiring ------------------------------------------------------------------------------


class _MetricsSink(StoreEventSink):
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
    from reconciler.engine.world import live_functions

    live = live_functions(sources, allow_loopback=config.allow_loopback, egress=config.egress)

    async def check_fn(provider: OAuth2Provider) -> Any:
        try:
            result = await live.check_provider_fn(provider)
        except Exception:
            metrics.token_fetches.labels("error").inc()
            raise
        metrics.token_fetches.labels("ok" if getattr(result, "ready", False) else "failed").inc()
        return result

    world = BasicWorld(store=store, resolve_fn=live.resolve_fn, probe_fn=live.probe_fn,
                       check_provider_fn=check_fn, events=_MetricsSink(store, metrics),
                       limits=Limits(config.concurrency, config.per_host),
                       announce_testing=config.announce_testing)
    return world, live.tokens


def _kopf_login(cluster: ClusterConfig) -> Any:
    import ssl

    import kopf

    auth = cluster.headers.get("Authorization", "")
    token = auth.split(" ", 1)[1] if auth.startswith("Bearer ") else None
    insecure = isinstance(cluster.verify, ssl.SSLContext) and \
        cluster.verify.verify_mode == ssl.CERT_NONE
    return kopf.ConnectionInfo(server=cluster.server, scheme="Bearer" if token else None,
                               token=token, insecure=insecure,
                               default_namespace=cluster.namespace)


async def _serve_http(config: OperatorConfig, metrics: OperatorMetrics,
                      state: dict[str, bool]) -> list[Any]:
    from aiohttp import web

    async def healthz(_req: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_req: web.Request) -> web.Response:
        ok = state.get("ready", False)
        return web.Response(text="ready" if ok else "not ready", status=200 if ok else 503)

    async def metrics_view(_req: web.Request) -> web.Response:
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    runners = []
    for port, routes in ((config.health_port, [web.get("/healthz", healthz),
                                               web.get("/readyz", readyz)]),
                         (config.metrics_port, [web.get("/metrics", metrics_view)])):
        if port < 0:
            continue
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.health_host, port)
        await site.start()
        sockets = getattr(getattr(site, "_server", None), "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        log.info("listening", extra={"port": bound, "paths": [r.path for r in routes]})
        runners.append(runner)
    return runners


async def run_operator(config: OperatorConfig, *, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set or a signal arrives (0), or leadership is lost (1)."""
    import kopf

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    cluster = load_config(config.kubeconfig, config.context)
    api = KubeApi(cluster)
    metrics = OperatorMetrics()
    state = {"ready": False}
    runners = await _serve_http(config, metrics, state)
    from reconciler.credentials import sources as sources_mod

    sources = sources_mod.default_sources(
        policy=config.source_policy, kubeconfig=config.kubeconfig, context=config.context,
        in_cluster=None if config.kubeconfig is None else False)
    factory = sources_mod._kubeconfig_factory(config.kubeconfig, config.context) \
        if config.kubeconfig else sources_mod._in_cluster_factory
    holder: list[Controller] = []
    secret_cache = CachedKubeSecretSource(
        factory, wanted=lambda ns, name: bool(holder and holder[0].dependents_of_secret(ns, name)))
    sources.kube = secret_cache
    store = KubeStore(api, namespaces=config.namespaces or None, label_selector=config.selector)
    world, tokens = build_world(store, config, metrics, sources)

    async def token_fn(ns: str, name: str) -> tuple[Any, float | None]:
        body = store.cached(ObjectRef(KIND_OAUTH2, ns, name))
        if body is None:
            from reconciler.credentials.base import CredentialError

            raise CredentialError("OAuth2ProviderNotFound", f"OAuth2Provider {name!r} not found")
        provider = OAuth2Provider.model_validate(to_stored(body).manifest)
        token = await tokens.token(provider)
        metrics.token_fetches.labels("ok").inc()
        return token, tokens.expires_in(provider)

    publisher = Publisher(api, store, sources, name=config.publish_secret, token_fn=token_fn,
                          on_write=lambda op: metrics.published.labels(op).inc())
    controller = Controller(store, world, publisher, metrics)
    controller.secret_cache = secret_cache
    holder.append(controller)
    leader: LeaderThread | None = None
    lost = asyncio.Event()
    code = 0
    try:
        if config.leader_election:

            def make_elector() -> LeaseElector:
                # Built on the lease thread: its own loop and connection, so renewals
                # never wait behind a busy reconcile loop or bulk status writes.
                lease_api = KubeApi(cluster, max_connections=2, timeout=config.renew_deadline)
                return LeaseElector(
                    lease_api, namespace=config.lease_namespace or cluster.namespace,
                    name=config.lease_name, identity=config.identity,
                    lease_duration=config.lease_duration,
                    renew_deadline=config.renew_deadline, renew_period=config.renew_period)

            leader = LeaderThread(make_elector, on_lost=lost.set)
            leader.start()
            state["ready"] = True  # a standby is a healthy, ready replica
            acquire = asyncio.create_task(leader.wait_acquired())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not acquire.done():
                acquire.cancel()
                return 0
            metrics.leader.set(1)
        state["ready"] = False
        started = time.monotonic()
        primed = await store.prime()
        log.info("primed cache", extra={"objects": primed,
                                        "seconds": round(time.monotonic() - started, 3)})
        controller.index_all()
        for ns in config.namespaces or [None]:  # type: ignore[list-item]
            items, _ = await api.list_all(resource_path("v1", "secrets", ns))
            for item in items:
                item.setdefault("metadata", {}).setdefault("namespace", ns)
                secret_cache.observe(item)
            del items
        for kind in (KIND_OAUTH2, KIND_SMTP):
            for body in store.cached_objects(kind):
                controller.handle(body, None)
        state["ready"] = True
        registry = _registry(controller, cluster, config)
        kopf_stop: asyncio.Future[None] = loop.create_future()
        kopf_task = asyncio.create_task(kopf.operator(
            registry=registry, standalone=True, clusterwide=not config.namespaces,
            namespaces=config.namespaces, stop_flag=kopf_stop))
        waiters: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait()), kopf_task}
        if leader is not None:
            waiters.add(asyncio.create_task(lost.wait(), name="lease"))
        gauges = asyncio.create_task(_gauges(controller))
        done, _pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if any(t.get_name() == "lease" for t in done):
            code = 1  # leadership lost: stop at once
        await controller.stop()
        gauges.cancel()
        if not kopf_stop.done():
            kopf_stop.set_result(None)
        for t in waiters:
            if t is not kopf_task:
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(kopf_task, 10)
    finally:
        await controller.stop()
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


async def _gauges(controller: Controller) -> None:
    while True:
        controller.refresh_condition_gauges()
        controller.metrics.api_requests.set(controller.store.api.requests)
        await asyncio.sleep(5)


def _registry(controller: Controller, cluster: ClusterConfig, config: OperatorConfig) -> Any:
    import kopf

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def _configure(settings: Any, **_: Any) -> None:
        settings.posting.enabled = False  # our engine posts the Events that matter
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.error_backoffs = [1, 2, 5]
        if config.selector:
            for plural in ("externalsmtps", "oauth2providers"):
                settings.watching.label_selectors[API_GROUP, plural] = config.selector

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> Any:
        return _kopf_login(cluster)

    @kopf.on.event(API_GROUP, VERSION, "externalsmtps", registry=registry)
    async def _smtp(event: Any, **_: Any) -> None:
        body = event["object"]
        body.setdefault("kind", KIND_SMTP)
        controller.handle(body, event.get("type"))

    @kopf.on.event(API_GROUP, VERSION, "oauth2providers", registry=registry)
    async def _provider(event: Any, **_: Any) -> None:
        body = event["object"]
        body.setdefault("kind", KIND_OAUTH2)
        controller.handle(body, event.get("type"))

    @kopf.on.event("", "v1", "secrets", registry=registry)
    async def _secret(event: Any, **_: Any) -> None:
        controller.handle_secret(event["object"], event.get("type"))

    return registry
