"""Selection's work per apply is bounded when every relay asks to be selected (issue 15).

Each pass of a requested relay runs selection over its whole namespace under the scope
lock.  It built a candidate for every relay of the namespace on every pass: N^2 builds
for an apply of N requested relays (60 s of CPU at 2,000).  Selection now keeps each
candidate per stored object (the local store hands an unchanged object out again as the
same object inside ``remember()``), so a candidate is built again only for the objects
written since the previous run.  These tests count (never time): candidate builds and
store listings per apply, and that the memo changes no decision, write or Event (the same
apply, memo on and off, gives the same sequence of status writes and Events).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import selection
from reconciler.engine.world import BasicWorld, Limits
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.runtimes.local import reconcile_objects
from reconciler.secret import Secret
from reconciler.stores.base import Event, ObjectRef, StatusMutator, StoredObject
from reconciler.stores.local import LocalStore

NS = "default"


@dataclass
class Creds:
    probe: ProbeCredentials
    versions: Mapping[str, str]


@dataclass
class Fleet:
    """N requested relays on a real SQLite store; tests end when their port's gate opens
    (released in a seeded random order) and fail for the ports in ``fail``."""

    store: LocalStore
    n: int
    seed: int
    now: float = 1_000_000.0
    fail: set[int] = field(default_factory=set)
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    writes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    lists: int = 0
    builds: int = 0
    selected_at_once: int = 0

    async def emit(self, event: Event) -> None:
        self.events.append((event.ref.name, event.type, event.reason, event.message))

    async def resolve(self, res: ExternalSmtp, provider: OAuth2Provider | None) -> Creds:
        return Creds(ProbeCredentials(password=Secret("pw")), {"passwordFrom": "h:1"})

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        gate = self.gates.get(spec.port)
        if gate is not None:
            await asyncio.wait_for(gate.wait(), 30)
        if spec.port in self.fail:
            return Verdict(False, "auth", "AuthenticationFailed", "no", "FixCredentials",
                           False, 0.01)
        return Verdict(True, "quit", "TestPassed", "ok", "None", False, 0.01)

    async def check(self, provider: OAuth2Provider) -> Any:
        raise AssertionError("no provider here")

    def world(self) -> BasicWorld:
        return BasicWorld(store=self.store, resolve_fn=self.resolve, probe_fn=self.probe,
                          check_provider_fn=self.check, events=self, limits=Limits(16, 16),
                          clock_fn=lambda: self.now, announce_after=3600.0)

    def selected(self) -> list[str]:
        return sorted(o.ref.name for o in self.store.list_sync("ExternalSmtp", NS)
                      if o.status.get("selected"))

    async def apply(self, refs: list[ObjectRef], rng: random.Random) -> None:
        """One apply of ``refs``; the tests end in a random order, a few scheduler turns
        apart, so passes queue on the scope lock as in a real fleet."""
        ports = list(range(3000, 3000 + self.n))
        self.gates = {p: asyncio.Event() for p in ports}
        task = asyncio.create_task(reconcile_objects(refs, self.world(), force=True))
        for p in rng.sample(ports, len(ports)):
            self.gates[p].set()
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        await task


def _doc(i: int, priority: int) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": f"r{i:03d}", "namespace": NS},
            "spec": {"host": "relay.test", "port": 3000 + i,
                     "authentication": "UsernamePassword", "username": "app@example.test",
                     "startTLS": True, "passwordFrom": {"env": "SMTP_PW"},
                     "refreshInterval": "1h", "selected": True, "priority": priority}}


def _fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, seed: int,
           *, memo: bool = True) -> Fleet:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = LocalStore(tmp_path / "state")
    f = Fleet(store, n, seed)
    if not memo:
        monkeypatch.setattr(selection, "_memos_of", lambda store, namespace: None)
    build = selection.candidate

    def counting_candidate(obj: StoredObject) -> selection.Candidate:
        f.builds += 1
        return build(obj)

    monkeypatch.setattr(selection, "candidate", counting_candidate)
    original_list, original_update = store.list, store.update_status

    async def counting_list(kind: str, namespace: str | None = None) -> list[StoredObject]:
        f.lists += 1
        return await original_list(kind, namespace)

    async def counting_update(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        def wrapped(cur: StoredObject) -> Any:
            out = mutate(cur)
            if out is not None and out.status != cur.status:
                f.writes.append((ref.name, dict(out.status)))
            return out
        written = await original_update(ref, wrapped)
        f.selected_at_once = max(f.selected_at_once, len(f.selected()))
        return written

    store.list = counting_list  # type: ignore[method-assign]
    store.update_status = counting_update  # type: ignore[method-assign]
    return f


async def _scenario(f: Fleet) -> list[ObjectRef]:
    """A first apply (a fifth of the relays fail), then a re-test in which the relay in
    use and a few others fail (failover, standbys told who is in use now)."""
    rng = random.Random(f.seed)
    prios = [rng.randrange(3) for _ in range(f.n)]
    refs = [u.obj.ref for u in f.store.upsert_many([_doc(i, prios[i]) for i in range(f.n)],
                                                    now=f.now)]
    f.fail = set(rng.sample(range(3000, 3000 + f.n), f.n // 5))
    await f.apply(refs, rng)
    (first,) = f.selected()
    f.fail |= {3000 + int(first[1:])} | set(rng.sample(range(3000, 3000 + f.n), 3))
    f.now += 7200
    await f.apply(refs, rng)
    return refs


@pytest.mark.parametrize("seed", range(3))
async def test_candidate_builds_and_listings_per_apply_are_linear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """An apply of N requested relays: at most one listing per pass (+ the final
    selection), and a few candidate builds per relay - was one per relay per pass (N^2:
    2,304 at N=48)."""
    n = 48
    f = _fleet(tmp_path, monkeypatch, n, seed)
    rng = random.Random(seed)
    refs = [u.obj.ref for u in f.store.upsert_many(
        [_doc(i, rng.randrange(3)) for i in range(n)], now=f.now)]
    f.fail = set(rng.sample(range(3000, 3000 + n), n // 5))
    await f.apply(refs, rng)
    assert len(f.selected()) == 1 and f.selected_at_once == 1
    assert f.lists <= n + 1, f.lists
    assert f.builds <= 5 * n, f.builds  # previews + objects written since the last run
    first = (f.lists, f.builds)
    # The re-test of the whole fleet (the relay in use fails: failover) stays linear too.
    f.fail |= {3000 + int(f.selected()[0][1:])}
    f.now += 7200
    await f.apply(refs, rng)
    assert len(f.selected()) == 1 and f.selected_at_once == 1
    assert f.lists - first[0] <= n + 1, f.lists
    assert f.builds - first[1] <= 5 * n, f.builds


async def test_without_the_memo_the_builds_are_quadratic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter above can fail: without the memo the same apply builds a candidate for
    every relay on every pass."""
    n = 48
    f = _fleet(tmp_path, monkeypatch, n, 0, memo=False)
    rng = random.Random(0)
    refs = [u.obj.ref for u in f.store.upsert_many([_doc(i, 0) for i in range(n)],
                                                   now=f.now)]
    await f.apply(refs, rng)
    assert f.builds > n * n // 2, f.builds


@pytest.mark.parametrize("seed", range(4))
async def test_the_memo_changes_no_decision_write_or_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The same two applies (first tests in a random order, then a failover re-test),
    with and without the memo: the same status writes in the same order, the same
    Events, never two relays selected in the store."""
    runs: list[Fleet] = []
    for memo in (True, False):
        with monkeypatch.context() as mp:
            f = _fleet(tmp_path / str(memo), mp, 24, seed, memo=memo)
            await _scenario(f)
            runs.append(f)
    with_memo, without = runs
    assert with_memo.builds < without.builds
    assert [name for name, _ in with_memo.writes] == [name for name, _ in without.writes]
    assert with_memo.writes == without.writes
    assert with_memo.events == without.events
    assert any(reason == "Failover" for _, _, reason, _ in with_memo.events)
    assert with_memo.selected() == without.selected()
    assert with_memo.selected_at_once == without.selected_at_once == 1
