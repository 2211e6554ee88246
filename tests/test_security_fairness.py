"""Fair pass slots in the operator (issue 9, item 4: "one tenant's slow providers occupied
all pass slots so another tenant's resources got no status").  A hung OAuth exchange is
bounded by its deadline, but while it runs it holds a pass slot; FairSlots keeps a quarter
of the slots for other namespaces and hands a freed slot to the namespace with the fewest
passes running.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.engine.world import Limits
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.fairslots import FairSlots
from reconciler.runtimes.operator.workers import WorkerPool
from reconciler.stores.base import ObjectRef
from tests.support import canary
from tests.support.faults import FaultServer
from tests.support.hostile_http import HostileHttp
from tests.support.kube_operator import (
    GROUP,
    VERSION,
    OperatorProcess,
    cluster,
    condition,
    relay_spec,
    wait_for,
)

HONEST = "user@example.test"


async def until(what: str, cond: object) -> None:
    """Let the loop run until ``cond()`` holds (bounded: no timer, a count of turns)."""
    for _ in range(10_000):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_a_namespace_never_takes_the_reserved_slots() -> None:
    slots = FairSlots(4)  # reserve 1: a namespace holds at most 3
    stack = AsyncExitStack()
    for _ in range(3):
        await stack.enter_async_context(slots.acquire("a"))
    fourth = asyncio.ensure_future(stack.enter_async_context(slots.acquire("a")))
    await asyncio.sleep(0)
    assert not fourth.done() and slots.busy == 3
    async with slots.acquire("b"):  # immediately: the reserved slot
        assert slots.running("b") == 1 and slots.busy == 4
    fourth.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fourth
    await stack.aclose()
    assert slots.busy == 0


async def test_a_freed_slot_goes_to_the_namespace_with_fewest_passes() -> None:
    slots = FairSlots(4)
    order: list[str] = []
    release = {ns: asyncio.Event() for ns in ("a1", "a2", "a3", "b1", "a4", "b2")}

    async def one(name: str) -> None:
        async with slots.acquire(name[0]):
            order.append(name)
            await release[name].wait()

    tasks = [asyncio.ensure_future(one(n)) for n in ("a1", "a2", "a3", "b1")]
    await asyncio.sleep(0)
    assert order == ["a1", "a2", "a3", "b1"] and slots.busy == 4
    tasks += [asyncio.ensure_future(one("a4")), asyncio.ensure_future(one("b2"))]
    await asyncio.sleep(0)
    release["a1"].set()  # a: 2 running, b: 1 running -> b goes first although a4 waited longer
    await until("a slot handed on", lambda: len(order) == 5)
    assert order[-1] == "b2"
    for event in release.values():
        event.set()
    await asyncio.gather(*tasks)
    assert slots.busy == 0


async def test_one_tenants_hung_passes_do_not_starve_another() -> None:
    """20 resources of tenant A hang in their passes (an OAuth exchange that never ends);
    tenant B's resource still gets its pass at once.  With the former single FIFO
    semaphore, B waited for a slot A never gave back."""
    hang = asyncio.Event()
    b_done = asyncio.Event()

    async def pass_fn(ref: ObjectRef) -> float | None:
        if ref.namespace == "tenant-a":
            await hang.wait()
        else:
            b_done.set()
        return 3600.0

    pool = WorkerPool(pass_fn, OperatorMetrics(), slots=8)
    try:
        for i in range(20):
            pool.ensure(ObjectRef("OAuth2Provider", "tenant-a", f"p{i}"), 1)
        await until("A holds all it may", lambda: pool._slots.busy == 6)  # 8 - reserve 2
        pool.ensure(ObjectRef("ExternalSmtp", "tenant-b", "mail"), 1)
        await asyncio.wait_for(b_done.wait(), 10)
    finally:
        hang.set()
        await pool.stop_all()


# --- end to end: the real operator on the API emulator, three tenants ---------------------

A_RELAYS = 70  # more than the operator's 64 pass slots: without FairSlots, A holds them all
C_PROVIDERS = 6


def test_hung_tenants_do_not_delay_another_tenant_in_the_operator(tmp_path: Path) -> None:
    """Tenant A has 70 relays pointing at an SMTP server that never sends its banner (each
    test hangs until its ``timeoutSeconds: 120``).  Tenant B's honest relay, created while
    they hang, is Ready after one connection test, before any of A's tests has ended: B
    never needed a slot A held.  Then tenant C's OAuth2Providers, whose token endpoint
    drips, get slots too, and their exchanges end at their 20 s deadline
    (``OAuth2TokenEndpointUnavailable``) while A's tests still hang.  With the former FIFO
    semaphore of 64 slots, A's 70 passes held every slot and B waited for A's tests to end
    (this test fails that way with ``FairSlots(..., reserve=0)``)."""
    with (cluster(tmp_path, namespaces=("team-a", "team-b", "team-c")) as c,
          FaultServer("no_banner") as a_relay, HostileHttp("drip", interval=0.5) as c_idp,
          RelayServer(mode="starttls", host="127.0.0.2",
                      users={HONEST: canary.PASSWORD}) as honest):
        c.put_secret("team-a", "pw", {"password": canary.canary("tenant-a")})
        for i in range(A_RELAYS):
            c.create_smtp("team-a", f"hang-{i}", {
                "host": "127.0.0.1", "port": a_relay.port, "startTLS": True,
                "authentication": "UsernamePassword", "username": f"u{i}@a.test",
                "passwordFrom": {"secretKeyRef": {"name": "pw", "key": "password"}},
                "connectionTest": {"timeoutSeconds": 120, "checkRelay": False}})

        def a_ended() -> int:
            return sum(conn.closed.is_set() for conn in a_relay.connections)

        with OperatorProcess(c, "op"):
            # A's tests hang (3 at once: its share of the per-host limit of 4); its other
            # passes wait in pass slots.
            wait_for("A's tests to hang", lambda: len(a_relay.connections) >= 3, timeout=60)
            c.put_secret("team-b", "relay-password", {"password": canary.PASSWORD})
            c.put_secret("team-b", "relay-ca", {"ca.crt": honest.ca_pem})
            spec = relay_spec(honest.port, user=HONEST)
            spec["host"] = "127.0.0.2"
            c.create_smtp("team-b", "mail", spec)
            wait_for("B Ready", lambda: condition(c.smtp("team-b", "mail"), "Ready")
                     .get("status") == "True", timeout=45)
            ended_when_b_was_ready = a_ended()
            assert honest.connections == 1  # one pass, one connection test
            assert len(honest.auth_attempts) == 1

            c.put_secret("team-c", "oauth", {"secret": canary.CLIENT_SECRET})
            for i in range(C_PROVIDERS):
                c.co.create_namespaced_custom_object(
                    GROUP, VERSION, "team-c", "oauth2providers", {
                        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OAuth2Provider",
                        "metadata": {"name": f"idp-{i}"},
                        "spec": {"grantType": "ClientCredentials", "clientId": f"c{i}",
                                 "clientSecretFrom": {"secretKeyRef": {"name": "oauth",
                                                                       "key": "secret"}},
                                 "tokenEndpoint": c_idp.url}})
            for i in range(C_PROVIDERS):
                got = wait_for(f"C's idp-{i} to give up", lambda n=i: condition(  # type: ignore[misc]
                    c.kube.emu.get_object(  # type: ignore[union-attr]
                        f"{GROUP}/{VERSION}", "oauth2providers", "team-c", f"idp-{n}"),
                    "Ready") or None, timeout=60)
                assert (got["status"], got["reason"]) == (
                    "False", "OAuth2TokenEndpointUnavailable"), got
            ended_when_c_gave_up = a_ended()
            assert c_idp.connections >= C_PROVIDERS
            # The operator hung up on the drip (noticed by the server at its next byte).
            wait_for("the drip to notice", lambda: c_idp.closed_early >= C_PROVIDERS)
        # Compared after the operator stopped, so a failure says which came first.
        assert ended_when_b_was_ready == 0, "B waited for one of A's tests to end"
        assert ended_when_c_gave_up == 0, "C's exchanges outlived A's hung tests"


# --- connection-test limits: shared by every namespace, fair between them --------------------


def _hold(limits: Limits, host: str, namespace: str, n: int, release: asyncio.Event,
          entered: list[str]) -> list[asyncio.Task[None]]:
    """``n`` tests of ``namespace`` against ``host`` that hang (until ``release``)."""
    async def one() -> None:
        async with limits.slot(host, namespace):
            entered.append(namespace)
            await release.wait()

    return [asyncio.ensure_future(one()) for _ in range(n)]


async def test_hung_tests_of_one_tenant_leave_connection_slots_to_another() -> None:
    """The global limit (16 by default) was one FIFO semaphore: a tenant whose relays on
    16 hosts never answer held every connection-test slot for up to their timeoutSeconds
    (600 s at most), and another tenant's test waited behind them.  Now a namespace holds
    at most three quarters of the slots, globally and per host (``Limits(fair=True)``, the
    operator's; with ``fair=False`` B's test never gets a slot here)."""
    limits = Limits(concurrency=8, per_host=4, fair=True)
    release = asyncio.Event()
    entered: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for i in range(10):  # tenant A: one hung test on each of 10 hosts, more than 8 slots
        tasks += _hold(limits, f"a{i}.example", "tenant-a", 1, release, entered)
    await until("A holds what it may", lambda: entered.count("tenant-a") >= 6)
    b = asyncio.ensure_future(_enter_once(limits, "b.example", "tenant-b"))
    await until("B's test to get a slot", b.done)
    assert entered.count("tenant-a") == 6  # A's other 4 still wait
    release.set()
    await asyncio.gather(*tasks, b)


async def test_one_tenant_cannot_take_every_slot_of_a_shared_relay_host() -> None:
    """The per-host limit (4) protects a relay; a tenant pointing relays at a blackholed
    port of a shared host (smtp.office365.com:9) held all 4 of that host's slots, and other
    tenants' tests of the real relay (port 587) waited for its timeouts."""
    limits = Limits(concurrency=16, per_host=4, fair=True)
    release = asyncio.Event()
    entered: list[str] = []
    tasks = _hold(limits, "smtp.office365.com", "tenant-a", 6, release, entered)
    await until("A's tests to hold the host", lambda: entered.count("tenant-a") >= 3)
    b = asyncio.ensure_future(_enter_once(limits, "SMTP.office365.com", "tenant-b"))
    await until("B's test to get the host's reserved slot", b.done)
    assert entered.count("tenant-a") == 3  # three of the host's four slots, not all
    release.set()
    await asyncio.gather(*tasks, b)


async def _enter_once(limits: Limits, host: str, namespace: str) -> None:
    async with limits.slot(host, namespace):
        pass
