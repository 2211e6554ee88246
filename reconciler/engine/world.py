"""The ``World``: everything a reconcile pass may touch, injected by the runtime.

``reconcile(ref, world)`` is a function of the stored object (read by key inside the pass)
and the world.  The world bundles the side effects so that every runtime - the local CLI,
the Kubernetes operator, a test - supplies its own:

* ``store`` - the :class:`reconciler.stores.base.Store` (SQLite locally, the CR status
  subresource in Kubernetes);
* ``resolve_credentials(resource, provider)`` - the credentials layer (secret sources +
  OAuth 2.0 token manager) returning an object with ``probe: ProbeCredentials`` and
  ``versions: {name: keyed version}``; raises ``CredentialError(reason, message)``;
* ``probe(spec, creds)`` - the connection test (``reconciler.probe.run_probe`` bound to the
  runtime's ``EgressPolicy``) returning a ``Verdict``;
* ``check_provider(provider)`` - the OAuth2Provider readiness check;
* ``events`` - where transitions go (Kubernetes Events, the local history, a progress bar);
* ``limits`` - the global and per-host concurrency limits on connection tests;
* ``refresh_floor`` - the shortest re-verification interval (``--min-refresh-interval``);
* ``clock`` - epoch seconds (tests pass a fake clock to reason about refresh and backoff);
* ``announce_testing`` - show a test in flight with ``Reconciling=True`` where the status
  would otherwise say something false meanwhile (a same-generation change: a rotated
  Secret, a forced re-verification; written before the test), and for any test still
  running after ``announce_after`` seconds; a new generation needs no such write
  (``status.observedGeneration`` lags, kstatus reads it as in progress), so a new
  resource costs one status write.  ``False``: never (a benchmark may turn it off).

The engine depends on the credentials layer only through the structural protocols
:class:`Credentials` and :class:`ProviderHealth` below, so it does not import SMTP or
OAuth stacks: the runtimes wire the real ones (``reconciler.runtimes.live``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, cast

from reconciler.engine.fairslots import FairSlots
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.stores.base import Event, Store


class Credentials(Protocol):
    """What ``resolve_credentials`` returns (``credentials.resolve.SmtpCredentials``)."""

    @property
    def probe(self) -> ProbeCredentials: ...

    @property
    def versions(self) -> Mapping[str, str]: ...


class ProviderHealth(Protocol):
    """What ``check_provider`` returns (``credentials.oauth.ProviderCheck``)."""

    @property
    def ready(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def version(self) -> str | None: ...

    @property
    def warnings(self) -> tuple[str, ...] | list[str]: ...


ResolveFn = Callable[[ExternalSmtp, OAuth2Provider | None], Awaitable[Credentials]]
ProbeFn = Callable[[ExternalSmtpSpec, ProbeCredentials], Awaitable[Verdict]]
CheckProviderFn = Callable[[OAuth2Provider], Awaitable[ProviderHealth]]


class EventSink(Protocol):
    async def emit(self, event: Event) -> None: ...


class StoreEventSink:
    """Events go to the store's history (the local runtime's default)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def emit(self, event: Event) -> None:
        await self._store.record_event(event)


class Limits:
    """A global limit and a per-host limit on concurrent connection tests.

    The per-host limit keeps one relay from being hammered by a fleet of resources that
    all point at it (and from tripping its rate limits, which would fail the tests).

    ``fair=True`` (the operator: manifests of many tenants) shares both limits fairly
    between namespaces (:class:`reconciler.engine.fairslots.FairSlots`): a namespace never
    holds more than three quarters of the global slots nor of one host's slots, so a
    tenant whose relays hang until their ``timeoutSeconds`` (or that points relays at a
    blackholed port of a shared relay host) cannot make another tenant's tests wait for
    them.  The CLI keeps plain FIFO semaphores (one author, full parallelism).
    """

    def __init__(self, concurrency: int = 16, per_host: int = 4, *, fair: bool = False) -> None:
        if concurrency < 1 or per_host < 1:
            raise ValueError("concurrency limits must be at least 1")
        self.concurrency = concurrency
        self.per_host = per_host
        self.fair = fair
        self._global = _limiter(concurrency, fair)
        # FIFO semaphores and a host limit no lower than the global one (the CLI's
        # ``--per-host N --concurrency N``): the host limit can never bind - at most
        # ``concurrency`` tests run at all - so a slot is the global semaphore alone (one
        # acquire per test instead of two, tests/test_engine_slots.py).
        self._only = (cast(asyncio.Semaphore, self._global(""))
                      if not fair and per_host >= concurrency else None)
        self._hosts: dict[str, _Limiter] = {}
        self._users: dict[str, int] = {}

    def slot(self, host: str, namespace: str = "") -> AbstractAsyncContextManager[None]:
        """``async with limits.slot(host, namespace):`` holds a slot of ``host`` and a
        global one (in that order) for one connection test."""
        if self._only is not None:
            return self._only
        return _Slot(self, host.lower(), namespace)

    def _enter(self, key: str, namespace: str) -> AbstractAsyncContextManager[object]:
        sem = self._hosts.get(key)
        if sem is None:
            sem = self._hosts[key] = _limiter(self.per_host, self.fair)
        self._users[key] = self._users.get(key, 0) + 1
        return sem(namespace)

    def _leave(self, key: str) -> None:
        self._users[key] -= 1
        if self._users[key] == 0:  # do not grow without bound over many hosts
            del self._users[key]
            self._hosts.pop(key, None)


class _Slot:
    """:meth:`Limits.slot` as a plain async context manager: it is entered once per
    connection test, and a generator-based one (``asynccontextmanager``) cost ~5 % of
    the engine's CPU per pass for the same bookkeeping."""

    __slots__ = ("_global", "_host", "_key", "_limits", "_namespace")

    def __init__(self, limits: Limits, key: str, namespace: str) -> None:
        self._limits = limits
        self._key = key
        self._namespace = namespace
        self._host: AbstractAsyncContextManager[object] | None = None
        self._global: AbstractAsyncContextManager[object] | None = None

    async def __aenter__(self) -> None:
        limits = self._limits
        host = limits._enter(self._key, self._namespace)
        try:
            await host.__aenter__()
        except BaseException:
            limits._leave(self._key)
            raise
        glob = limits._global(self._namespace)
        try:
            await glob.__aenter__()
        except BaseException:
            try:
                await host.__aexit__(None, None, None)
            finally:
                limits._leave(self._key)
            raise
        self._host, self._global = host, glob

    async def __aexit__(self, *exc: object) -> None:
        host, glob = self._host, self._global
        assert host is not None and glob is not None
        self._host = self._global = None
        try:
            try:
                await glob.__aexit__(None, None, None)
            finally:
                await host.__aexit__(None, None, None)
        finally:
            self._limits._leave(self._key)


_Limiter = Callable[[str], AbstractAsyncContextManager[object]]


def _limiter(total: int, fair: bool) -> _Limiter:
    """``limiter(namespace)`` -> an async context manager holding one of ``total`` slots."""
    if fair:
        return FairSlots(total).acquire
    sem = asyncio.Semaphore(total)
    return lambda _namespace: sem


class World(Protocol):
    """The side effects of a reconcile pass (see the module docstring)."""

    @property
    def store(self) -> Store: ...

    @property
    def events(self) -> EventSink: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def announce_testing(self) -> bool: ...

    @property
    def refresh_floor(self) -> float: ...

    def clock(self) -> float: ...

    async def resolve_credentials(
        self, resource: ExternalSmtp, provider: OAuth2Provider | None
    ) -> Credentials: ...

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict: ...

    async def check_provider(self, provider: OAuth2Provider) -> ProviderHealth: ...

    def scope_lock(self, namespace: str) -> asyncio.Lock: ...


@dataclass
class BasicWorld:
    """A :class:`World` assembled from functions (what runtimes and tests build)."""

    store: Store
    resolve_fn: ResolveFn
    probe_fn: ProbeFn
    check_provider_fn: CheckProviderFn
    events: EventSink
    limits: Limits = field(default_factory=Limits)
    clock_fn: Callable[[], float] = time.time
    announce_testing: bool = True
    announce_after: float = 5.0  # seconds a test may run before Reconciling=True is written
    # The shortest re-verification interval (seconds): a refreshInterval under it is raised
    # to it (a test is a login).  Runtimes take it from --min-refresh-interval.
    refresh_floor: float = 60.0
    # Called by a runtime when a new pass over many resources begins: drop per-pass caches
    # (the local runtime snapshots secret sources once per pass; see runtimes/local.py).
    begin_pass: Callable[[], None] = lambda: None
    # Called once by the runtime when it is done with the world: release what it started
    # (the local runtime's probe worker processes; see runtimes/probepool.py).
    close_fn: Callable[[], Awaitable[None]] | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def aclose(self) -> None:
        if self.close_fn is not None:
            await self.close_fn()

    def clock(self) -> float:
        return self.clock_fn()

    async def resolve_credentials(
        self, resource: ExternalSmtp, provider: OAuth2Provider | None
    ) -> Credentials:
        return await self.resolve_fn(resource, provider)

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        return await self.probe_fn(spec, creds)

    async def check_provider(self, provider: OAuth2Provider) -> ProviderHealth:
        return await self.check_provider_fn(provider)

    def scope_lock(self, namespace: str) -> asyncio.Lock:
        """Serialises selection within a scope in this process."""
        lock = self._locks.get(namespace)
        if lock is None:
            lock = self._locks[namespace] = asyncio.Lock()
        return lock
