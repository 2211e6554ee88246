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
import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as hs

from reconciler.engine import selection
from reconciler.engine.reconcile import ReconcileResult, reconcile
from reconciler.engine.world import BasicWorld, Limits
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.runtimes.local import PassError, delete_refs, reconcile_objects
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
    writes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lists: int = 0
    gets: int = 0
    decided: int = 0  # candidates looked at by decisions, summed over all of them
    decisions: int = 0
    selected_at_once: int = 0
    started: list[str] = field(default_factory=list)  # status writes, as they begin
    yields: int = 0  # scheduler turns each status write waits (a round trip)
    in_flight: int = 0
    most_in_flight: int = 0

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


def _doc(i: int, priority: int = 0, selected: bool = True) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND,
            "metadata": {"name": f"r{i:03d}", "namespace": NS},
            "spec": {"host": "relay.test", "port": 3000 + i,
                     "authentication": "UsernamePassword", "username": "app@example.test",
                     "startTLS": True, "passwordFrom": {"env": "SMTP_PW"},
                     "refreshInterval": "1h", "selected": selected, "priority": priority}}


def _scope(path: Path, monkeypatch: pytest.MonkeyPatch, priorities: list[int],
           writes_at_once: int = 1) -> tuple[Scope, list[ObjectRef]]:
    """``writes_at_once`` > 1: the store declares that many concurrent status writes (as
    the Kubernetes store does) and each write yields a few turns, so that they overlap."""
    path.mkdir(parents=True, exist_ok=True)
    s = Scope(LocalStore(path / "state"))
    if writes_at_once > 1:
        s.store.concurrent_writes = writes_at_once  # type: ignore[attr-defined]
        s.yields = 3
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
    original_get = s.store.get

    async def counting_list(kind: str, namespace: str | None = None) -> list[StoredObject]:
        s.lists += 1
        return await original_list(kind, namespace)

    async def counting_get(ref: ObjectRef) -> StoredObject | None:
        s.gets += 1
        return await original_get(ref)

    async def gated_update(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        s.started.append(ref.name)
        s.in_flight += 1
        s.most_in_flight = max(s.most_in_flight, s.in_flight)
        try:
            for _ in range(s.yields):
                await asyncio.sleep(0)
            if ref.name in s.hold:
                s.holding.setdefault(ref.name, asyncio.Event()).set()
                await asyncio.wait_for(s.hold[ref.name].wait(), WAIT)
            if ref.name in s.broken:
                raise StoreError(f"status of {ref.name} cannot be written")
        finally:
            s.in_flight -= 1

        def logged(cur: StoredObject) -> Any:
            out = mutate(cur)
            if out is not None and out.status != cur.status:
                s.writes.append((ref.name, dict(out.status)))
            return out

        written = await original_update(ref, logged)
        s.selected_at_once = max(s.selected_at_once, len(s.selected()))
        return written

    s.store.list = counting_list  # type: ignore[method-assign]
    s.store.get = counting_get  # type: ignore[method-assign]
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


async def test_selection_work_per_apply_is_linear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """48 requested relays whose tests end together: a few selection runs, not one per
    pass, and each looks at the relays written since the previous one, not at the whole
    namespace (one listing per apply).  The code before listed the namespace and decided
    over all 48 candidates on every pass (49 listings, 2,352 candidates decided)."""
    n = 48
    s, refs = _scope(tmp_path, monkeypatch, [i % 3 for i in range(n)])
    _open_all(s, [r.name for r in refs])
    results = await asyncio.wait_for(reconcile_objects(refs, s.world()), WAIT)
    assert [r.action for r in results] == ["tested"] * n
    objs = s.objects()
    assert all(o.status.get("lastTest", {}).get("passed") for o in objs.values())
    assert s.selected() == ["r000"] and s.selected_at_once == 1
    assert s.lists <= 1, s.lists
    assert s.decisions <= n // 4, s.decisions
    assert s.decided <= 2 * n, s.decided
    assert s.gets <= 4 * n, s.gets  # the pass's own read, and selection's of what changed
    # Every relay shows the one decision (standbys name the relay in use).
    for name, o in objs.items():
        sel = next(c for c in o.status["conditions"] if c["type"] == "Selected")
        assert (sel["status"], sel["reason"]) == (
            ("True", "Active") if name == "r000" else
            ("False", "SelectionConflict") if int(name[1:]) % 3 == 0 else ("False", "Standby"))
        assert "'r000'" in sel["message"] or name == "r000"
    assert [e[2] for e in s.selection_events()] == ["Active"]


@pytest.mark.parametrize("writes_at_once", [1, 4])
@pytest.mark.parametrize("seed", range(4))
async def test_coalesced_passes_end_in_the_state_of_sequential_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
        writes_at_once: int) -> None:
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
            s, refs = _scope(tmp_path / str(one_at_a_time), mp, prios, writes_at_once)
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
    assert coalesced.decisions < sequential.decisions
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


@pytest.mark.parametrize("writes_at_once", [1, 4])
@pytest.mark.parametrize("who", ["standby", "in-use"])
async def test_a_failing_write_loses_no_other_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, who: str,
        writes_at_once: int) -> None:
    """A batch in which one pass's status write fails (a store error): that pass reports
    it (and is retried by the runtime), every other verdict of the batch is written with
    its Selected condition.  For the relay in use (its failing verdict would release it)
    the run stops before any winner is written, and the others are decided again without
    that verdict: the relay in use stays, never two selected."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1, 2, 3], writes_at_once)
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


@pytest.mark.parametrize("index", [True, False])
async def test_a_cancelled_leader_or_waiter_loses_no_other_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: bool) -> None:
    """The store's writes yield (as a Kubernetes store's do).  r000's pass leads a run for
    r000, r001 and r002 and is cancelled while the run waits for r001's write; r003's pass,
    queued meanwhile, is cancelled too.  The cancelled passes' verdicts are not written
    (as for any cancelled pass: the next pass tests again); r001's and r002's are, by the
    next run, with their Selected conditions; never two selected.  Without the index
    (``index=False``: a store that lists, like the operator's) the same."""
    if not index:
        monkeypatch.setattr(selection, "_memos_of", lambda store, namespace: None)
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


async def _turns_until(cond: Any, turns: int = 500) -> bool:
    """Let the event loop run until ``cond()`` (bounded in turns; no sleep)."""
    for _ in range(turns):
        if cond():
            return True
        await asyncio.sleep(0)
    return bool(cond())


async def _failover_batch(s: Scope, refs: list[ObjectRef],
                          hold: list[str]) -> asyncio.Task[Any]:
    """r000 (priority 0) in use and r001-r005 (priority 1) standbys; then a forced re-test
    in which r000 fails (the writes of ``hold`` waiting): r000's release, r001's acquire
    and four standby verdicts."""
    _open_all(s, [r.name for r in refs])
    await asyncio.wait_for(reconcile_objects(refs, s.world()), WAIT)
    assert s.selected() == ["r000"]
    s.gates, s.events = {}, []
    s.fail = {"r000"}
    s.now += 7200
    run = asyncio.create_task(reconcile_objects(refs, s.world(), force=True))
    assert await _turns_until(lambda: len(s.gates) == len(refs))  # every test started
    s.started = []
    s.hold = {name: asyncio.Event() for name in hold}
    _open_all(s, [r.name for r in refs])
    return run


async def test_writes_that_keep_selection_go_alongside_a_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a store that declares concurrent writes (the Kubernetes store), the verdicts
    of relays that neither hold nor take selection are written while the release of the
    relay in use waits for the server; the winner's acquire waits for the release (never
    two selected).  Before, a run wrote every queued verdict one after another: the four
    standby verdicts waited behind r000's release (this test failed)."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1, 1, 1, 1, 1], writes_at_once=4)
    run = await _failover_batch(s, refs, ["r000"])
    await _started(s, "r000")  # r000's release waits for the server
    standbys = {"r002", "r003", "r004", "r005"}
    assert await _turns_until(lambda: standbys <= set(s.started)), s.started
    assert "r001" not in s.started  # the acquire waits for the release
    s.hold["r000"].set()
    await asyncio.wait_for(run, WAIT)
    assert s.selected() == ["r001"] and s.selected_at_once == 1
    assert s.started.index("r001") > s.started.index("r000")
    assert sorted((e[0], e[2]) for e in s.selection_events()) == [
        ("r000", "Failover"), ("r001", "Failover")]
    for name, o in s.objects().items():
        sel = next(c for c in o.status["conditions"] if c["type"] == "Selected")
        assert (sel["status"], sel["reason"]) == (
            ("True", "Active") if name == "r001" else
            ("False", "NotReady") if name == "r000" else ("False", "SelectionConflict"))
        assert o.memo is not None and o.memo.tested_at == s.now


@pytest.mark.parametrize("limit", [2, 3, 8])
async def test_writes_in_flight_stay_within_the_stores_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """48 requested relays whose tests end together, a store that declares ``limit``
    concurrent writes: a run has at most ``limit`` status writes in flight (the changes of
    who is selected one at a time, the others up to ``limit - 1``), and more than one
    (before: exactly one, this test failed); the outcome is the sequential one."""
    n = 48
    s, refs = _scope(tmp_path, monkeypatch, [i % 3 for i in range(n)], writes_at_once=limit)
    _open_all(s, [r.name for r in refs])
    await asyncio.wait_for(reconcile_objects(refs, s.world()), WAIT)
    assert 2 <= s.most_in_flight <= limit, s.most_in_flight
    assert s.selected() == ["r000"] and s.selected_at_once == 1
    for name, o in s.objects().items():
        sel = next(c for c in o.status["conditions"] if c["type"] == "Selected")
        assert (sel["status"], sel["reason"]) == (
            ("True", "Active") if name == "r000" else
            ("False", "SelectionConflict") if int(name[1:]) % 3 == 0 else ("False", "Standby"))
    assert [e[2] for e in s.selection_events()] == ["Active"]


async def test_a_cancelled_run_cancels_its_writes_in_flight_and_loses_no_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent writes: the pass leading a failover run is cancelled while r000's
    release and r003's standby verdict wait for the server.  The run's writes in flight
    are cancelled with it and the requests they served go back to the queue: every pass
    but the cancelled one ends with its verdict written (r003's by a later run), nothing
    is left queued or in flight, never two relays are selected."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1, 1, 1, 1, 1], writes_at_once=4)
    world = s.world()
    _open_all(s, [r.name for r in refs])
    await asyncio.wait_for(reconcile_objects(refs, world), WAIT)
    leaders: list[str | None] = []
    run = selection._run

    async def recording(namespace: str, world: Any, scope: Any, leader: Any) -> None:
        leaders.append(leader.own.name if leader.own is not None else None)
        await run(namespace, world, scope, leader)

    monkeypatch.setattr(selection, "_run", recording)
    s.gates = {}
    s.fail = {"r000"}
    s.now += 7200
    passes = {r.name: asyncio.create_task(reconcile(r, world, force=True)) for r in refs}
    assert await _turns_until(lambda: len(s.gates) == len(refs))  # every test started
    s.started = []
    s.hold = {"r000": asyncio.Event(), "r003": asyncio.Event()}
    _open_all(s, [r.name for r in refs])
    await _started(s, "r000")
    await _started(s, "r003")
    lead = leaders[-1]
    assert lead is not None, leaders
    passes[lead].cancel()
    assert await _turns_until(lambda: passes[lead].done())
    for ev in s.hold.values():
        ev.set()
    done: dict[str, Any] = {}
    for name, task in passes.items():
        try:
            done[name] = await asyncio.wait_for(task, WAIT)
        except asyncio.CancelledError as exc:
            done[name] = exc
    assert isinstance(done[lead], asyncio.CancelledError)
    objs = s.objects()
    for name in sorted(set(passes) - {lead}):
        res = done[name]
        assert isinstance(res, ReconcileResult) and res.action == "tested", (name, res)
        memo = objs[name].memo
        assert memo is not None and memo.tested_at == s.now, name
    assert s.in_flight == 0
    assert all(not sc.queue for sc in selection._SCOPES.values())
    assert s.selected_at_once == 1 and len(s.selected()) == 1
    await asyncio.wait_for(reconcile_objects(refs, world), WAIT)
    assert s.selected() == ["r001"] and s.selected_at_once == 1


async def _story(s: Scope, seed: int) -> None:
    """Three applies with changes in between: tests that end in a random order a few
    scheduler turns apart; then priorities changed, relays that stop or start asking for
    selection, two deleted (the relay in use among them; the local runtime selects
    again), three added; then a forced
    re-test in which the relay in use and others fail."""
    rng = random.Random(seed)
    world = s.world()
    n = 20
    docs = {i: (rng.randrange(3), rng.random() < 0.8) for i in range(n)}

    def upsert(items: dict[int, tuple[int, bool]]) -> list[ObjectRef]:
        return [u.obj.ref for u in s.store.upsert_many(
            [_doc(i, p, sel) for i, (p, sel) in sorted(items.items())], now=s.now)]

    async def apply(refs: list[ObjectRef], force: bool = False) -> None:
        s.gates = {}
        run = asyncio.create_task(reconcile_objects(refs, world, force=force))
        names = [r.name for r in refs]
        for name in rng.sample(names, len(names)):
            s.gates.setdefault(name, asyncio.Event()).set()
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        await asyncio.wait_for(run, WAIT)

    refs = upsert(docs)
    s.fail = {f"r{i:03d}" for i in rng.sample(range(n), 4)}
    await apply(refs)
    for i in rng.sample(range(n), 5):
        docs[i] = (rng.randrange(3), docs[i][1])
    for i in rng.sample(range(n), 3):
        docs[i] = (docs[i][0], not docs[i][1])
    (used,) = s.selected()
    gone = [int(used[1:]), *rng.sample([i for i in sorted(docs) if i != int(used[1:])], 1)]
    for i in gone:
        del docs[i]
    await delete_refs(s.store, world, [ObjectRef(KIND, NS, f"r{i:03d}") for i in gone])
    for i in range(n, n + 3):
        docs[i] = (rng.randrange(3), True)
    s.now += 60
    refs = upsert(docs)
    await apply(refs)
    s.fail |= set(s.selected()) | {f"r{i:03d}" for i in rng.sample(sorted(docs), 3)}
    s.now += 7200
    await apply(refs, force=True)


@pytest.mark.parametrize("seed", range(6))
async def test_the_index_decides_as_a_full_listing_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Selection's index (the relays written since the previous run, read again; the
    decision from the selected relays, the best Ready ones and the best one waiting) against
    a full listing and a decision over every relay on every run: the same status writes
    in the same order and the same Events, through new relays, changed priorities, relays
    that stop or start asking, deletions and failovers; never two selected at once."""
    runs: list[Scope] = []
    for index in (True, False):
        with monkeypatch.context() as mp:
            if not index:
                mp.setattr(selection, "_memos_of", lambda store, namespace: None)
            s, _ = _scope(tmp_path / str(index), mp, [])
            with s.store.remember():  # one view throughout: upserts and deletes included
                await _story(s, seed)
            runs.append(s)
    indexed, listed = runs
    assert indexed.lists < listed.lists
    assert indexed.decided < listed.decided
    assert [w[0] for w in indexed.writes] == [w[0] for w in listed.writes]
    assert indexed.writes == listed.writes
    assert indexed.events == listed.events
    assert indexed.selected() == listed.selected() and len(indexed.selected()) == 1
    assert indexed.selected_at_once == listed.selected_at_once == 1


async def test_a_verdict_whose_write_failed_is_never_selected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby that failed, then passes a re-test whose write fails: its stored status
    still says it failed.  When the relay in use fails afterwards, selection must not pick
    the standby on the strength of the verdict it previewed but never wrote (Selected only
    when a passed test is stored): nothing Ready to take over, the relay in use is kept."""
    s, refs = _scope(tmp_path, monkeypatch, [0, 1])
    world = s.world()
    world.announce_testing = False  # the verdict is the pass's only write
    s.fail = {"r001"}
    _open_all(s, ["r000", "r001"])
    await asyncio.wait_for(reconcile_objects(refs, world), WAIT)
    assert s.selected() == ["r000"]
    s.fail = set()
    s.broken = {"r001"}
    s.now += 7200
    failed: list[PassError] = []
    with s.store.remember():  # one apply's view: selection keeps its index throughout
        await asyncio.wait_for(
            reconcile_objects([refs[1]], world, force=True, failed=failed), WAIT)
        assert [p.ref.name for p in failed] == ["r001"]
        s.broken = set()
        s.fail = {"r000"}
        s.now += 60
        await asyncio.wait_for(reconcile_objects([refs[0]], world, force=True), WAIT)
    objs = s.objects()
    assert objs["r001"].status["lastTest"]["passed"] is False
    assert not objs["r001"].status.get("selected")
    sel = next(c for c in objs["r000"].status["conditions"] if c["type"] == "Selected")
    assert (sel["status"], sel["reason"]) == ("True", "ActiveRelayFailing")
    assert s.selected() == ["r000"]


_cands = hs.lists(
    hs.builds(selection.Candidate, name=hs.sampled_from("abcdefghij"),
              created_at=hs.sampled_from("123"), requested=hs.booleans(),
              ready=hs.booleans(), testing=hs.booleans(), has_active=hs.booleans(),
              selected=hs.booleans(), priority=hs.integers(0, 3),
              ready_since=hs.sampled_from([0.0, 100.0, 1000.0]), failing=hs.booleans(),
              pending=hs.booleans(), failback_after=hs.sampled_from([0.0, 300.0])),
    max_size=10, unique_by=lambda c: c.name)


def _c(name: str, priority: int, **kw: Any) -> selection.Candidate:
    base: dict[str, Any] = {"created_at": "1", "requested": True, "ready": True,
                            "testing": False, "has_active": True, "selected": False,
                            "ready_since": 100.0}
    return selection.Candidate(name=name, priority=priority, **(base | kw))


@settings(max_examples=400)
@given(_cands, hs.sampled_from([0.0, 200.0, 2000.0]), hs.randoms())
# Two Ready relays ranked above the relay in use, both waiting for their fail-back delay.
@example([_c("a", 2, selected=True), _c("b", 0), _c("c", 1)], 200.0, random.Random(1))
# Nothing selected; the best Ready relay waits for a better one's first verdict (rule 4).
@example([_c("a", 1), _c("b", 0, ready=False, has_active=False, pending=True),
          _c("c", 2)], 0.0, random.Random(2))
def test_the_index_hands_decide_what_decides(cands: list[selection.Candidate], now: float,
                                             rnd: random.Random) -> None:
    """The candidates the index hands to ``decide`` (the selected relays, the best Ready
    one and every Ready one ranked above the relay in use, the best one waiting for its
    first verdict) give the same choice - winner, fail-back times, the relay waited for -
    as every relay of the namespace, whatever the order the index learnt them in."""
    idx = selection._Index()

    def learn(c: selection.Candidate) -> None:
        m = object.__new__(selection._Memo)
        m.obj = StoredObject(ref=ObjectRef(KIND, NS, c.name), manifest={}, generation=1,
                             created_at=c.created_at, status={}, memo=None, version="1",
                             uid="u")
        m.cand = c
        idx.put(m)

    again = rnd.sample(cands, len(cands) // 2)
    for c in rnd.sample(cands, len(cands)):
        if c in again:  # first as it was before a write
            learn(dataclasses.replace(c, ready=not c.ready, selected=not c.selected,
                                      pending=not c.pending, priority=(c.priority + 1) % 4))
        else:
            learn(c)
    for c in again:  # then as written
        learn(c)
    assert selection.decide(idx.deciding(), now) == selection.decide(cands, now)
