"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Only the leader reconciles; standbys poll the Lease and take over when it has not been
renewed for ``lease_duration`` seconds (the leader died or was partitioned).  Every write
is an optimistic update carrying the Lease's ``resourceVersion``, so two candidates that
race for an expired Lease cannot both win: one gets ``409 Conflict`` and stays standby.

The leader renews every ``renew_period``.  Attempts are hedged until ``renew_deadline``:
when one has not answered after ``retry_period`` a second one starts on another
connection, so one stalled request does not cost the Lease and a slow but working API
server is not abandoned either.  If it cannot renew before
``renew_deadline`` (the API is unreachable, or another holder appears),
:meth:`LeaseElector.hold` returns:
the operator then stops reconciling at once and exits, and its Deployment restarts it
as a standby - the same contract as controller-runtime.  ``renew_deadline`` is shorter
than ``lease_duration`` so that the old leader has stopped before anyone can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from reconciler.stores.kubeapi import (
    ApiError,
    Conflict,
    KubeApi,
    NotFound,
    describe_server,
    resource_path,
)

log = logging.getLogger(__name__)


def _micro_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    text = text.replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


class LeaseElector:
    def __init__(self, api: KubeApi, *, namespace: str, name: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 renew_period: float = 2.0, retry_period: float = 2.0) -> None:
        if not renew_deadline < lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.renew_period = renew_period
        self.retry_period = retry_period
        self.is_leader = False
        self.transitions = 0
        self._last_error = ""
        self._held: dict[str, Any] | None = None  # the Lease as we last wrote it (we hold it)

    @property
    def reachable(self) -> bool:
        """False while the last attempt could not get an answer about the Lease."""
        return not self._last_error

    def _report(self, exc: ApiError) -> None:
        """One line per change of error (not one per retry) naming the server."""
        what = f"{exc.code or ''} {exc.reason}".strip()
        if what != self._last_error:
            log.warning(f"cannot reach the Lease on {describe_server(self.api.creds)}: {what}",
                        extra={"lease": f"{self.namespace}/{self.name}", "code": exc.code})
        self._last_error = what

    @property
    def _path(self) -> str:
        return resource_path("coordination.k8s.io/v1", "leases", self.namespace, self.name)

    def _spec(self, now: float, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": acquire_time or _micro_time(now), "renewTime": _micro_time(now),
                "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards.

        While we hold it, a renewal is one PUT of the Lease as we last wrote it (its
        resourceVersion is the precondition: client-go's fast path); only a 409 (someone
        else wrote it) falls back to GET + PUT.  Halves the Lease requests."""
        now = time.time()
        held = self._held
        if held is not None:
            spec = held.get("spec") or {}
            lease = dict(held, spec=self._spec(now, spec.get("acquireTime"),
                                               int(spec.get("leaseTransitions") or 0)))
            try:
                self._held = await self.api.put(self._path, lease)
                self._last_error = ""
                return True
            except Conflict:
                self._held = None  # changed behind our back: look at it (slow path)
            except ApiError as exc:
                self._report(exc)
                return False
        try:
            lease = await self.api.get(self._path)
        except NotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, None, 0)}
            try:
                self._held = await self.api.post(resource_path("coordination.k8s.io/v1",
                                                               "leases", self.namespace), body)
            except ApiError as exc:
                self._report(exc)
                return False
            self._last_error = ""
            return True
        except ApiError as exc:
            self._report(exc)
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = _parse_time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        mine = holder == self.identity
        if not mine and holder and renewed + duration > now:
            self._held = None
            return False  # someone else holds a live lease
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        lease["spec"] = self._spec(now, spec.get("acquireTime") if mine else None, transitions)
        try:
            self._held = await self.api.put(self._path, lease)  # carries resourceVersion
        except ApiError as exc:
            self._held = None
            self._report(exc)
            return False  # 409: another candidate won the race
        self._last_error = ""
        if not mine:
            self.transitions = transitions
        return True

    async def acquire(self) -> None:
        """Wait (as a standby) until we are the leader."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.retry_period)
        self.is_leader = True
        log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}",
                                         "identity": self.identity})

    async def renew(self) -> bool:
        """Renew before ``renew_deadline``.  Attempts are hedged: when one has not answered
        after ``retry_period`` a second starts on another connection (a stalled connection
        or a dropped request does not eat the deadline), while the first may still answer
        (a slow but working API server is not abandoned).  At most two in flight."""
        deadline = time.monotonic() + self.renew_deadline
        pending: set[asyncio.Task[bool]] = set()
        started = -1e9
        try:
            for _ in range(10_000):
                now = time.monotonic()
                if now >= deadline:
                    return False
                if len(pending) < 2 and now - started >= self.retry_period:
                    pending.add(asyncio.create_task(self.try_acquire_or_renew()))
                    started = now
                wait = min(deadline - now, max(0.05, started + self.retry_period - now))
                if not pending:  # the last attempt failed fast: wait for the next slot
                    await asyncio.sleep(wait)
                    continue
                done, pending = await asyncio.wait(pending, timeout=wait,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is None and task.result():
                        return True
            return False
        finally:
            for task in pending:
                task.cancel()

    async def hold(self) -> None:
        """Renew every ``renew_period`` until we cannot; returns when leadership is lost."""
        while True:
            await asyncio.sleep(self.renew_period)
            if not await self.renew():
                self.is_leader = False
                log.error("lost leadership", extra={"lease": f"{self.namespace}/{self.name}",
                                                    "identity": self.identity})
                return

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once."""
        if not self.is_leader:
            return
        try:
            lease = await self.api.get(self._path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["renewTime"] = _micro_time(0)
                await self.api.put(self._path, lease)
        except ApiError:
            pass
        self._held = None
        self.is_leader = False


class LeaderThread:
    """Runs a :class:`LeaseElector` on its own thread and event loop.

    The operator's loop can be saturated for seconds (10,000 resources catching up after a
    restart run back to back); a renewal scheduled on that loop would miss its deadline and
    the replica would give up leadership while healthy.  client-go runs the elector
    concurrently for the same reason.  The thread has its own API connection; it tells the
    operator's loop when leadership is acquired (:meth:`wait_acquired`) and lost
    (``on_lost``, called on the operator's loop).
    """

    def __init__(self, make_elector: Callable[[], LeaseElector],
                 on_lost: Callable[[], None]) -> None:
        self._make = make_elector
        self._on_lost = on_lost
        self._caller: asyncio.AbstractEventLoop | None = None
        self._acquired: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._release = True
        self._thread: threading.Thread | None = None
        self.elector: LeaseElector | None = None

    def start(self) -> None:
        self._caller = asyncio.get_running_loop()
        self._acquired = self._caller.create_future()
        self._thread = threading.Thread(target=self._main, name="lease", daemon=True)
        self._thread.start()

    async def wait_acquired(self) -> None:
        assert self._acquired is not None
        await asyncio.shield(self._acquired)

    def _notify(self, fn: Callable[[], None]) -> None:
        if self._caller is not None and not self._caller.is_closed():
            self._caller.call_soon_threadsafe(fn)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        elector = self.elector = self._make()
        try:
            await elector.acquire()

            def acquired() -> None:
                if self._acquired is not None and not self._acquired.done():
                    self._acquired.set_result(None)

            self._notify(acquired)
            await elector.hold()
            self._notify(self._on_lost)
        except asyncio.CancelledError:
            if self._release:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(elector.release(), 5)
        finally:
            await elector.api.close()

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing (and release the Lease on a clean stop); waits for the thread."""
        self._release = release
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(10)
