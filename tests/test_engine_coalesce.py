"""Coalesced selection: one run serves every pass waiting for the scope (issue 15).

Every pass of a relay that asks for selection used to run selection over its whole
namespace on its own: N requested relays cost N listings and N decisions over N
candidates (N^2).  Now a pass queues its request on the scope and the first pass to hold
the scope lock serves every queued one: one listing, each queued verdict previewed, one
decision, each verdict written with its Selected condition, releases before the winner,
Events once per change of the relay in use.

These tests count (never time) listings and candidates decided, and check the guarantees
of the new path: coalesced passes end in the same state as the same passes one at a
time, a pass whose write fails or that is cancelled loses nobody else's verdict, and the
Events say each change of the relay in use once.  A real SQLite store; the connection test
is a stand-in that ends when the test opens its gate (a stand-in relay: these tests are
about selection, the probe has its own).
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
from reconciler.engine.reconcile import ReconcileResult, reconcile
from reconciler.engine.world import BasicWorld, Limits
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.runtimes.local import PassError, reconcile_objects
from reconciler.secret import Secret
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusMutator,
    StoredObject,
    StoreError,
)
from reconciler.stores.local import LocalStore

NS = "default"
KIND = "ExternalSmtp"
WAIT = 30.0  # a bound on every wait (never reached when the code is right)


@dataclass
class Creds:
    probe: ProbeCredentials
    versions: Mapping[str, str]


@dataclass
class Scope:
    """Requested relays ``r000``... in one namespace of a real SQLite store.

    A relay's test ends when its gate opens and fails when its name is in ``fail``.  Its
    status writes wait while its name is in ``hold`` (as a Kubernetes store's writes wait
    for the API server, so that a run yields in the middle) and raise ``StoreError`` while
    it is in ``broken``."""

    store: LocalStore
    now: float = 1_000_000.0
    fail: set[str] = field(default_factory=set)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    holding: dict[str, asyncio.Event] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    lists: int = 0
    decided: int = 0  # candidates looked at by decisions, summed over all of them
    decisions: int = 0
    selected_at_once: int = 0

    async def emit(self, event: Event) -> None:
        self.events.append((event.ref.name, event.type, event.reason, event.message))

    async def resolve(self, res: ExternalSmtp, provider: OAuth2Provider | None) -> Creds:
        return Creds(ProbeCredentials(password=Secret("pw")), {"passwordFrom": "h:1"})

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        name = f"r{spec.port - 3000:03d}"
        gate = self.gates.setdefault(name, asyncio.Event())
        await asyncio.wait_for(gate.wait(), WAIT)
        if name in self.fail:
            return Verdict(False, "auth", "AuthenticationFailed", "no", "FixCredentials",
                           False, 0.01)
        return Verdict(True, "quit", "TestPassed", "ok", "None", False, 0.01)

    async def check(self, provider: OAuth2Provider) -> Any:
        raise AssertionError("no provider here")

    def world(self) -> BasicWorld:
        return BasicWorld(store=self.store, resolve_fn=self.resolve, probe_fn=self.probe,
                          check_provider_fn=self.check, events=self, limits=Limits(16, 16),
                          clock_fn=lambda: self.now, announce_after=3600.0)

    def objects(self) -> dict[str, StoredObject]:
        return {o.ref.name: o for o in self.store.list_sync(KIND, NS)}

    def selected(self) -> list[str]:
        return sorted(n for n, o in self.objects().items() if o.status.get("selected"))

    def selection_events(self) -> list[tuple[str, str, str, str]]:
        return [e for e in self.events if e[2] in selection.SELECTION_EVENTS]


def _doc(i: int, priority: int = 0) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND,
            "metadata": {"name": f"r{i:03d}", "namespace": NS},
            "spec": {"host": "relay.test", "port": 3000 + i,
                     "authentication": "UsernamePassword", "username": "app@example.test",
                     "startTLS": True, "passwordFrom": {"env": "SMTP_PW"},
                     "refreshInterval": "1h", "selected": True, "priority": priority}}


def _scope(path: Path, monkeypatch: pytest.MonkeyPatch, priorities: list[int]) -> tuple[
        Scope, list[ObjectRef]]:
    path.mkdir(parents=True, exist_ok=True)
    s = Scope(LocalStore(path / "state"))
    refs = [u.obj.ref for u in s.store.upsert_many(
        [_doc(i, p) for i, p in enumerate(priorities)], now=s.now)]
    decide = selection.decide

    def counting_decide(cands: list[selection.Candidate], now: float = 0.0,
                        ) -> selection.Choice:
        s.decisions += 1
        s.decided += len(cands)
        return decide(cands, now)

    monkeypatch.setattr(selection, "decide", counting_decide)
    original_list, original_update = s.store.list, s.store.update_status

    async def counting_list(kind: str, namespace: str | None = None) -> list[StoredObject]:
        s.lists += 1
        return await original_list(kind, namespace)

    async def gated_update(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        if ref.name in s.hold:
            s.holding.setdefault(ref.name, asyncio.Event()).set()
            await asyncio.wait_for(s.hold[ref.name].wait(), WAIT)
        if ref.name in s.broken:
            raise StoreError(f"status of {ref.name} cannot be written")
        written = await original_update(ref, mutate)
        s.selected_at_once = max(s.selected_at_once, len(s.selected()))
        return written

    s.store.list = counting_list  # type: ignore[method-assign]
    s.store.update_status = gated_update  # type: ignore[method-assign]
    return s, refs


def _open_all(s: Scope, names: list[str]) -> None:
    for name in names:
        s.gates.setdefault(name, asyncio.Event()).set()


def _final(s: Scope) -> dict[str, dict[str, Any]]:
    """Each relay's status, without the conditions' lastTransitionTime (a relay that was
    selected for a moment in between flips twice one after the other)."""
    out = {}
    for name, o in s.objects().items():
        st = dict(o.status)
        st["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                            for c in st.get("conditions") or []]
        out[name] = st
    return out


async def test_passes_that_finish_together_share_one_selection_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """48 requested relays whose tests end together: a few selection runs, not one per
    pass.  The code before coalescing listed the namespace and decided over all 48
    candidates on every pass (49 listings, 48 * 48 = 2,304 candidates decided)."""
    n = 48
    s, refs = _scope(tmp_path, monkeypatch, [i % 3 for i in range(n)])
    _open_all(s, [r.name for r in refs])
    results = await asyncio.wait_for(reconcile_objects(refs, s.world()), WAIT)
    assert [r.action for r in results] == ["tested"] * n
    objs = s.objects()
    assert all(o.status.get("lastTest", {}).get("passed") for o in objs.values())
    assert s.selected() == ["r000"] and s.selected_at_once == 1
    assert s.lists <= n // 4, s.lists
    assert s.decided <= n * n // 4, s.decided
    # Every relay shows the one decision (standbys name the relay in use).
    for name, o in objs.items():
        sel = next(c for c in o.status["conditions"] if c["type"] == "Selected")
        assert (sel["status"], sel["reason"]) == (
            ("True", "Active") if name == "r000" else
            ("False", "SelectionConflict") if int(name[1:]) % 3 == 0 else ("False", "Standby"))
        assert "'r000'" in sel["message"] or name == "r000"
    assert [e[2] for e in s.selection_events()] == ["Active"]


@pytest.mark.parametrize("seed", range(4))
async def test_coalesced_passes_end_in_the_state_of_sequential_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The same two applies - a first apply (a fifth of the relays fail), then a forced
    re-test in which the relay in use and a few others fail - once with every test ending
    at the same moment (passes coalesced) and once one pass at a time (each pass its own
    selection run, as before coalescing): the same final status for every relay, one relay
    in use, never two in the store at once.  The coalesced run may skip intermediate winners,
    so it records at most as many selection Events."""
    n = 24
    rng = random.Random(seed)
    prios = [rng.randrange(3) for _ in range(n)]
    fail1 = {f"r{i:03d}" for i in rng.sample(range(n), n // 5)}
    more = {f"r{i:03d}" for i in rng.sample(range(n), 3)}
    finals, scopes = [], []
    for one_at_a_time in (False, True):
        with monkeypatch.context() as mp:
            s, refs = _scope(tmp_path / str(one_at_a_time), mp, prios)
            names = [r.name for r in refs]
            tasks = 1 if one_at_a_time else None
            s.fail = set(fail1)
            _open_all(s, names)
            await asyncio.wait_for(reconcile_objects(refs, s.world(), max_tasks=tasks), WAIT)
            (first,) = s.selected()
            s.fail |= {first} | more
            s.now += 7200
            await asyncio.wait_for(
                reconcile_objects(refs, s.world(), max_tasks=tasks, force=True), WAIT)
            finals.append(_final(s))
            scopes.append(s)
    coalesced, sequential = scopes
    assert finals[0] == finals[1]
    assert len(coalesced.selected()) == 1
    assert coalesced.selected_at_once == sequential.selected_at_once == 1
    assert coalesced.lists < sequential.lists
    assert len(coalesced.selection_events()) <= len(sequential.selection_events())
    assert [e[2] for e in coalesced.selection_events()].count("Active") == 1


async def test_events_say_each_change_of_the_relay_in_use_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay in use and its first standby fail their re-tests, the second standby
    passes; the three verdicts arrive together, the relay in use's first.  One change of
    the relay in use (r000 -> r002): one pair of Failover Events.  One pass at a time (the
    code before coalescing), r001 took over for a moment and failed: two pairs."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1, 2])
    names = [r.name for r in refs]
    _open_all(s, names)
    await asyncio.wait_for(reconcile_objects(refs, s.world()), WAIT)
    assert s.selected() == ["r000"]
    s.events.clear()
    s.gates = {}
    s.fail = {"r000", "r001"}
    s.now += 7200
    run = asyncio.create_task(reconcile_objects(refs, s.world(), force=True))
    for _ in range(200):  # every pass reaches its test (bounded; no sleep)
        if len(s.gates) == 3:
            break
        await asyncio.sleep(0)
    assert len(s.gates) == 3
    _open_all(s, names)  # r000's verdict first, then r001's, then r002's
    await asyncio.wait_for(run, WAIT)
    assert s.selected() == ["r002"] and s.selected_at_once == 1
    events = s.selection_events()
    assert sorted((e[0], e[2]) for e in events) == [("r000", "Failover"), ("r002", "Failover")]
    assert all("'r000'" in e[3] and "'r002'" in e[3] for e in events)
    assert not any(e[2] == "ActiveRelayFailing" for e in s.events)


@pytest.mark.parametrize("who", ["standby", "in-use"])
async def test_a_failing_write_loses_no_other_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    """A batch in which one pass's status write fails (a store error): that pass reports
    it (and is retried by the runtime), every other verdict of the batch is written with
    its Selected condition.  For the relay in use (its failing verdict would release it)
    the run stops before any winner is written, and the others are decided again without
    that verdict: the relay in use stays, never two selected."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1, 2, 3])
    names = [r.name for r in refs]
    _open_all(s, names)
    await asyncio.wait_for(reconcile_objects(refs, s.world()), WAIT)
    assert s.selected() == ["r000"]
    s.gates = {}
    s.now += 7200
    bad = "r001" if who == "standby" else "r000"
    s.fail = {bad}
    s.broken = {bad}
    _open_all(s, names)
    failed: list[PassError] = []
    await asyncio.wait_for(reconcile_objects(refs, s.world(), force=True, failed=failed),
                           WAIT)
    assert [p.ref.name for p in failed] == [bad]
    objs = s.objects()
    for name in names:
        last = objs[name].status.get("lastTest") or {}
        memo = objs[name].memo
        assert last.get("passed") is True and memo is not None
        if name == bad:  # its verdict was not written: the next pass tests again
            assert memo.tested_at < s.now
        else:
            assert memo.tested_at == s.now
    assert s.selected() == ["r000"] and s.selected_at_once == 1
    s.broken = set()
    await asyncio.wait_for(reconcile_objects(refs, s.world(), failed=failed), WAIT)
    want = ["r000"] if who == "standby" else ["r001"]
    assert s.selected() == want and s.selected_at_once == 1


async def _started(s: Scope, name: str) -> None:
    ev = s.holding.setdefault(name, asyncio.Event())
    await asyncio.wait_for(ev.wait(), WAIT)


async def test_a_cancelled_leader_or_waiter_loses_no_other_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's writes yield (as a Kubernetes store's do).  r000's pass leads a run for
    r000, r001 and r002 and is cancelled while the run waits for r001's write; r003's pass,
    queued meanwhile, is cancelled too.  The cancelled passes' verdicts are not written
    (as for any cancelled pass: the next pass tests again); r001's and r002's are, by the
    next run, with their Selected conditions; never two selected."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1, 2, 3])
    world = s.world()
    s.hold = {"r001": asyncio.Event()}
    passes = {r.name: asyncio.create_task(reconcile(r, world)) for r in refs}
    _open_all(s, ["r000", "r001", "r002"])
    await _started(s, "r001")  # the run of r000, r001, r002 waits for r001's write
    _open_all(s, ["r003"])
    for _ in range(200):  # r003's pass reaches the scope (bounded; no sleep)
        if any(r.own is not None and r.own.name == "r003"
               for sc in selection._SCOPES.values() for r in sc.queue):
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("r003 never queued")
    passes["r003"].cancel()
    assert not any(passes[n].done() for n in ("r000", "r001", "r002"))
    passes["r000"].cancel()  # the leader: the run is its
    s.hold["r001"].set()
    done: dict[str, ReconcileResult | BaseException] = {}
    for name, task in passes.items():
        try:
            done[name] = await asyncio.wait_for(task, WAIT)
        except asyncio.CancelledError as exc:
            done[name] = exc
    assert isinstance(done["r000"], asyncio.CancelledError)
    assert isinstance(done["r003"], asyncio.CancelledError)
    for name in ("r001", "r002"):
        res = done[name]
        assert isinstance(res, ReconcileResult) and res.action == "tested"
    objs = s.objects()
    assert objs["r000"].memo is None and objs["r003"].memo is None  # not written
    for name in ("r001", "r002"):
        st = objs[name].status
        assert st["lastTest"]["passed"] is True
        sel = next(c for c in st["conditions"] if c["type"] == "Selected")
        # r000 (preferred) has no verdict yet: nothing is chosen before it (rule 4).
        assert (sel["status"], sel["reason"]) == ("False", "Standby")
        assert "'r000'" in sel["message"]
    assert s.selected() == [] and s.selected_at_once == 0
    assert all(not sc.queue for sc in selection._SCOPES.values())
    # The next passes of the cancelled relays: r000 is chosen.
    s.hold = {}
    await asyncio.wait_for(reconcile_objects([refs[0], refs[3]], world), WAIT)
    assert s.selected() == ["r000"] and s.selected_at_once == 1
