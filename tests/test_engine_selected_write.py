"""A relay's verdict and its ``Selected`` condition in one status write (issue 15).

A pass of a relay that takes part in selection (``spec.selected: true``, or it holds
selection) writes its verdict and its Selected condition together: selection is decided
under the scope lock from the verdict as it will be written.  Before, the verdict was one
write and selection a second one (and a relay whose first test was still running got a
``Selected=False/NotReady`` write from the others' passes, racing with its own pass).
The store is the real SQLite store; every status write is counted, and after every write
the store is checked: never two relays selected at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import conditions as cond
from reconciler.engine.reconcile import reconcile
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.secret import Secret
from reconciler.stores.base import ObjectRef, StatusMutator, StoredObject
from reconciler.stores.local import LocalStore

NS = "default"


@dataclass
class Creds:
    probe: ProbeCredentials
    versions: Mapping[str, str]


@dataclass
class Env:
    store: LocalStore
    world: BasicWorld
    now: float = 1_000_000.0
    writes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    selected_at_once: int = 0  # the most relays selected in the store after any write
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # port -> test may end
    fail: set[int] = field(default_factory=set)  # ports whose test fails

    def status(self, name: str) -> dict[str, Any]:
        obj = self.store.get_sync(ObjectRef("ExternalSmtp", NS, name))
        assert obj is not None
        return obj.status

    def selected(self) -> list[str]:
        return sorted(o.ref.name for o in self.store.list_sync("ExternalSmtp", NS)
                      if o.status.get("selected"))

    async def resolve(self, res: ExternalSmtp, provider: OAuth2Provider | None) -> Creds:
        return Creds(ProbeCredentials(password=Secret("pw")), {"passwordFrom": "h:1"})

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        gate = self.gates.get(str(spec.port))
        if gate is not None:
            await asyncio.wait_for(gate.wait(), 30)
        if spec.port in self.fail:
            return Verdict(False, "auth", "AuthenticationFailed", "no", "FixCredentials",
                           False, 0.01)
        return Verdict(True, "quit", "TestPassed", "ok", "None", False, 0.01)

    async def check(self, provider: OAuth2Provider) -> Any:
        raise AssertionError("no provider here")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = LocalStore(tmp_path / "state")
    holder: list[Env] = []
    world = BasicWorld(store=store, resolve_fn=lambda r, p: holder[0].resolve(r, p),
                       probe_fn=lambda s, c: holder[0].probe(s, c),
                       check_provider_fn=lambda p: holder[0].check(p),
                       events=StoreEventSink(store), limits=Limits(16, 16),
                       clock_fn=lambda: holder[0].now, announce_after=3600.0)
    e = Env(store, world)
    holder.append(e)
    original = store.update_status

    async def counting(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        def wrapped(cur: StoredObject) -> Any:
            out = mutate(cur)
            if out is not None and out.status != cur.status:
                e.writes.append((ref.name, dict(out.status)))
            return out
        written = await original(ref, wrapped)
        e.selected_at_once = max(e.selected_at_once, len(e.selected()))
        return written

    store.update_status = counting  # type: ignore[method-assign]
    yield e
    store.close()


def _doc(name: str, port: int, *, priority: int = 0, selected: bool = True) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"host": "relay.test", "port": port, "authentication": "UsernamePassword",
                     "username": "app@example.test", "startTLS": True,
                     "passwordFrom": {"env": "SMTP_PW"}, "refreshInterval": "1h",
                     "selected": selected, "priority": priority}}


def _upsert(e: Env, docs: list[dict[str, Any]]) -> list[ObjectRef]:
    return [u.obj.ref for u in e.store.upsert_many(docs, now=e.now)]


def _selected_cond(e: Env, name: str) -> tuple[str | None, str | None]:
    st = e.status(name)
    return cond.attr(st, cond.SELECTED, "status"), cond.attr(st, cond.SELECTED, "reason")


async def test_a_requested_relays_first_pass_is_one_status_write(env: Env) -> None:
    """Verdict and Selected=True/Active together: one write (it was two)."""
    (ref,) = _upsert(env, [_doc("a", 2001)])
    r = await reconcile(ref, env.world)
    assert r.tested and r.status.get("selected") is True
    assert [name for name, _ in env.writes] == ["a"], env.writes
    _, only = env.writes[0]
    assert cond.attr(only, cond.READY, "status") == "True"
    assert cond.attr(only, cond.SELECTED, "reason") == "Active"
    assert env.selected() == ["a"]


async def test_two_first_passes_finishing_out_of_order_write_three_times(env: Env) -> None:
    """``b`` (priority 1) passes first, while ``a`` (priority 0, preferred) is still being
    tested: ``b`` waits as a standby (rule 4) in its verdict write, ``a`` gets no
    Selected write while its test runs; when ``a``'s verdict is in, ``b`` is told who won
    (the others first, the winner last) and ``a``'s verdict write selects it.  Three
    status writes (were six: two per verdict, plus Selected writes
    on ``a`` while its test ran and on ``b`` after each selection)."""
    env.gates = {"2001": asyncio.Event(), "2002": asyncio.Event()}
    ra, rb = _upsert(env, [_doc("a", 2001, priority=0), _doc("b", 2002, priority=1)])
    ta = asyncio.create_task(reconcile(ra, env.world))
    tb = asyncio.create_task(reconcile(rb, env.world))
    env.gates["2002"].set()
    await tb
    assert _selected_cond(env, "b") == ("False", "Standby")
    assert "waiting for the first test of 'a'" in str(
        cond.attr(env.status("b"), cond.SELECTED, "message"))
    assert cond.of(env.status("a"), cond.SELECTED) is None  # its own pass will say
    env.gates["2001"].set()
    await ta
    assert env.selected() == ["a"]
    assert _selected_cond(env, "a") == ("True", "Active")
    assert _selected_cond(env, "b") == ("False", "Standby")
    assert [name for name, _ in env.writes] == ["b", "b", "a"], env.writes
    assert env.selected_at_once == 1


async def test_a_failover_releases_the_old_relay_in_its_verdict_write(env: Env) -> None:
    """The relay in use fails its re-verification while a standby is Ready: its verdict
    write releases it (Selected=False) and only then is the standby selected."""
    ra, rb = _upsert(env, [_doc("a", 2001, priority=0), _doc("b", 2002, priority=1)])
    await reconcile(ra, env.world)
    await reconcile(rb, env.world)
    assert env.selected() == ["a"]
    env.writes.clear()
    env.fail.add(2001)
    env.now += 2 * 3600  # both due
    r = await reconcile(ra, env.world)
    assert r.tested and r.verdict is not None and not r.verdict.passed
    assert env.selected() == ["b"]
    assert [name for name, _ in env.writes] == ["a", "b"], env.writes
    released = env.writes[0][1]
    assert cond.attr(released, cond.READY, "status") == "False"
    assert released.get("selected") is False  # released in the verdict write itself
    assert env.selected_at_once == 1


@pytest.mark.parametrize("seed", range(4))
async def test_concurrent_first_passes_never_select_two_and_pick_the_best(
        env: Env, seed: int) -> None:
    """Eight requested relays, their first tests ending in a random order (two fail):
    never two selected in the store after any write, and at the end the best-ranked
    relay that passed is the one in use (rule 4: the order of the verdicts does not
    matter); every relay's Selected condition agrees."""
    rng = random.Random(seed)
    ports = list(range(2001, 2009))
    env.gates = {str(p): asyncio.Event() for p in ports}
    env.fail = set(rng.sample(ports, 2))
    prios = {p: rng.randrange(3) for p in ports}
    refs = _upsert(env, [_doc(f"r{p}", p, priority=prios[p]) for p in ports])
    tasks = [asyncio.create_task(reconcile(ref, env.world)) for ref in refs]
    for p in rng.sample(ports, len(ports)):
        env.gates[str(p)].set()
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    passed = [p for p in ports if p not in env.fail]
    best = min(passed, key=lambda p: (prios[p], env.store.get_sync(
        ObjectRef("ExternalSmtp", NS, f"r{p}")).created_at, f"r{p}"))  # type: ignore[union-attr]
    assert env.selected() == [f"r{best}"]
    assert env.selected_at_once == 1
    for p in ports:
        status, reason = _selected_cond(env, f"r{p}")
        if p == best:
            assert (status, reason) == ("True", "Active")
        else:
            assert status == "False"
            assert reason == ("NotReady" if p in env.fail else
                              "SelectionConflict" if prios[p] == prios[best] else "Standby")
