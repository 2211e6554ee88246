"""Standby and failover as a model: priority, the first pass, failover, fail-back with
hysteresis, the relay in use failing - with injected functions and a fake clock over the
real SQLite store.  (End to end with real relays: tests/test_active_e2e.py.)"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as hs

from reconciler.engine import conditions as cond
from reconciler.engine.reconcile import reconcile
from reconciler.engine.selection import Candidate, choose, decide
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.stores.base import ObjectRef
from reconciler.stores.local import LocalStore
from tests.test_engine import Fake, doc


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[LocalStore, Fake, BasicWorld]]:
    store = LocalStore(tmp_path / "state")
    fake = Fake()
    world = BasicWorld(store=store, resolve_fn=fake.resolve, probe_fn=fake.probe,
                       check_provider_fn=fake.check, events=StoreEventSink(store),
                       limits=Limits(4, 2), clock_fn=lambda: fake.now)
    yield store, fake, world
    store.close()


def relay(name: str, host: str, priority: int, **spec: Any) -> dict[str, Any]:
    d = doc(name, host, selected=True)
    d["spec"]["priority"] = priority
    d["spec"].update(spec)
    return d


def ref(name: str) -> ObjectRef:
    return ObjectRef("ExternalSmtp", "default", name)


def st(store: LocalStore, name: str) -> dict[str, Any]:
    obj = store.get_sync(ref(name))
    assert obj is not None
    return obj.status


def selected(store: LocalStore) -> list[str]:
    return [o.ref.name for o in store.list_sync("ExternalSmtp") if o.status.get("selected")]


def sel_reason(store: LocalStore, name: str) -> str:
    return str(cond.attr(st(store, name), cond.SELECTED, "reason"))


def events(store: LocalStore, name: str) -> list[str]:
    return [e.reason for e in store.events_sync(ref(name))]


@pytest.mark.parametrize("first", ["primary", "standby"])
async def test_first_pass_is_deterministic(env: Any, first: str) -> None:
    """Whichever test finishes first, the preferred relay is the one in use.  Before, the
    first relay to pass became active and kept it (a documented incumbency race)."""
    store, fake, world = env
    store.upsert_many([relay("primary", "a.test", 0), relay("standby", "b.test", 10)],
                      now=fake.now)
    other = "standby" if first == "primary" else "primary"
    await reconcile(ref(first), world)
    if first == "standby":  # a Ready standby does not grab selection from a pending primary
        assert selected(store) == []
        assert sel_reason(store, "standby") == "Standby"
        assert "waiting for the first test of 'primary'" in str(
            cond.attr(st(store, "standby"), cond.SELECTED, "message"))
    await reconcile(ref(other), world)
    assert selected(store) == ["primary"]
    assert sel_reason(store, "standby") == "Standby"
    assert "takes over if it fails" in str(cond.attr(st(store, "standby"), cond.SELECTED,
                                                      "message"))


async def _setup_pair(env: Any) -> tuple[LocalStore, Fake, BasicWorld]:
    store, fake, world = env
    store.upsert_many([relay("primary", "a.test", 0, failbackDelay="5m"),
                       relay("standby", "b.test", 10)], now=fake.now)
    await reconcile(ref("primary"), world)
    await reconcile(ref("standby"), world)
    assert selected(store) == ["primary"]
    return store, fake, world


async def test_selection_leaves_relays_that_do_not_ask_to_their_own_pass(env: Any) -> None:
    """A fleet where one relay asks to be selected: choosing it writes nothing on the
    others.  Before, it wrote Selected=False/NotRequested (and observedGeneration, so
    kstatus read an untested resource as current) on every relay whose first pass had not
    run yet - in the operator a write racing with that pass (409, re-read, a second
    write) for most of a new fleet."""
    store, fake, world = env
    store.upsert_many([relay("primary", "a.test", 0), doc("plain", "b.test")], now=fake.now)
    await reconcile(ref("primary"), world)
    assert selected(store) == ["primary"]
    assert st(store, "plain") == {}  # untouched until its own pass
    await reconcile(ref("plain"), world)
    assert sel_reason(store, "plain") == "NotRequested"
    assert st(store, "plain")["selected"] is False


async def test_failover_when_the_relay_in_use_fails_reverification(env: Any) -> None:
    store, fake, world = await _setup_pair(env)
    fake.outcome["a.test"] = "ConnectionRefused"
    fake.now += 2 * 3600  # re-verification due
    r = await reconcile(ref("primary"), world)
    assert r.tested
    assert selected(store) == ["standby"]
    p = st(store, "primary")
    assert p["active"]["health"] == "Failing"
    assert p["active"]["failure"]["reason"] == "ConnectionRefused"
    assert sel_reason(store, "primary") == "NotReady"
    assert sel_reason(store, "standby") == "Active"
    assert "Failover" in events(store, "standby") and "Failover" in events(store, "primary")
    # the standby took over: the relay in use is not failing, so no ActiveRelayFailing
    # Warning (failed before: it was emitted with the verdict, before selection moved)
    assert "ActiveRelayFailing" not in events(store, "primary")


async def test_relay_in_use_failing_without_standby_has_its_own_reason(env: Any) -> None:
    """Before, the relay in use that went down stayed 'Selected=True LastKnownGoodRetained'
    although the last-known-good was the very configuration failing."""
    store, fake, world = env
    store.upsert_many([relay("only", "a.test", 0)], now=fake.now)
    await reconcile(ref("only"), world)
    fake.outcome["a.test"] = "ConnectionRefused"
    fake.now += 2 * 3600
    await reconcile(ref("only"), world)
    s = st(store, "only")
    assert s["selected"] is True and sel_reason(store, "only") == "ActiveRelayFailing"
    assert s["active"]["health"] == "Failing"
    assert "is the last-known-good, and it is failing now" in str(
        cond.attr(s, cond.READY, "message"))
    assert "ActiveRelayFailing" in events(store, "only")
    # a newer generation failing is the other case: the one in use is kept, not failing
    fake.outcome.pop("a.test")
    fake.now += 2 * 3600
    await reconcile(ref("only"), world)
    assert st(store, "only")["active"]["health"] == "Healthy"
    fake.outcome["bad.test"] = "AuthenticationFailed"
    store.upsert_many([relay("only", "bad.test", 0)], now=fake.now)
    await reconcile(ref("only"), world)
    s = st(store, "only")
    assert sel_reason(store, "only") == "LastKnownGoodRetained"
    assert s["active"]["health"] == "Healthy" and s["activeGeneration"] == 1
    assert "generation 1 remains in use" in str(cond.attr(s, cond.READY, "message"))


async def test_failback_waits_for_the_delay_and_does_not_flap(env: Any) -> None:
    store, fake, world = await _setup_pair(env)
    fake.outcome["a.test"] = "ConnectionRefused"
    fake.now += 2 * 3600
    r = await reconcile(ref("primary"), world)
    assert selected(store) == ["standby"]
    # the primary recovers: Ready again, but it waits 5 minutes before taking back over
    fake.outcome.pop("a.test")
    fake.now += r.requeue_after or 0
    r = await reconcile(ref("primary"), world)
    assert cond.is_true(st(store, "primary"), cond.READY)
    assert selected(store) == ["standby"]
    assert sel_reason(store, "primary") == "FailbackPending"
    assert r.requeue_after is not None and r.requeue_after <= 300
    # it flaps before the delay is over: no fail-back, and the clock starts again
    fake.now += 120
    fake.outcome["a.test"] = "ConnectionRefused"
    await reconcile(ref("primary"), world, force=True)
    assert selected(store) == ["standby"] and sel_reason(store, "primary") == "NotReady"
    fake.outcome.pop("a.test")
    fake.now += 10
    r = await reconcile(ref("primary"), world, force=True)
    assert sel_reason(store, "primary") == "FailbackPending"
    fake.now += 200  # 200 s Ready: still not long enough
    r = await reconcile(ref("primary"), world)
    assert r.action == "skipped" and selected(store) == ["standby"]
    assert r.requeue_after is not None and r.requeue_after <= 101
    fake.now += r.requeue_after
    r = await reconcile(ref("primary"), world)  # due for fail-back: no test needed
    assert r.action == "skipped" and not r.tested
    assert selected(store) == ["primary"]
    assert sel_reason(store, "standby") == "Standby"
    assert "Failback" in events(store, "primary")


async def test_equal_priorities_never_preempt(env: Any) -> None:
    store, fake, world = env
    store.upsert_many([relay("old", "a.test", 0)], now=fake.now)
    await reconcile(ref("old"), world)
    fake.now += 5
    store.upsert_many([relay("new", "b.test", 0)], now=fake.now)
    await reconcile(ref("new"), world)
    assert selected(store) == ["old"] and sel_reason(store, "new") == "SelectionConflict"
    fake.outcome["a.test"] = "ConnectionRefused"
    await reconcile(ref("old"), world, force=True)
    assert selected(store) == ["new"]
    fake.outcome.pop("a.test")
    fake.now += 3600
    await reconcile(ref("old"), world, force=True)
    assert cond.is_true(st(store, "old"), cond.READY)
    assert selected(store) == ["new"]  # the older one does not preempt an equal priority
    assert sel_reason(store, "old") == "SelectionConflict"


async def test_priority_change_alone_moves_selection_without_a_test(env: Any) -> None:
    store, fake, world = await _setup_pair(env)
    calls = len(fake.calls)
    fake.now += 600  # both Ready for longer than the standby's fail-back delay
    store.upsert_many([relay("standby", "b.test", 0, failbackDelay="0s")], now=fake.now)
    store.upsert_many([relay("primary", "a.test", 20, failbackDelay="5m")], now=fake.now)
    r = await reconcile(ref("standby"), world)
    assert r.action == "inherited"
    await reconcile(ref("primary"), world)
    assert selected(store) == ["standby"] and len(fake.calls) == calls


def test_choose_rule_with_priorities() -> None:
    def c(name: str, prio: int, **kw: Any) -> Candidate:
        base: dict[str, Any] = {"requested": True, "ready": True, "testing": False,
                                "has_active": True, "selected": False}
        base.update(kw)
        return Candidate(name, "1", priority=prio, **base)

    assert choose([c("b", 0), c("a", 10)]) == "b"  # lowest priority wins, not the name
    # a pending preferred relay holds the first choice back
    assert choose([c("b", 0, ready=False, has_active=False, pending=True), c("a", 10)]) is None
    # ... but not a failover: the relay in use failed, the standby takes over at once
    assert choose([c("b", 0, ready=False, has_active=False, pending=True),
                   c("a", 10), c("x", 5, selected=True, ready=False, failing=True)]) == "a"
    # fail-back only after the delay
    inc = c("s", 10, selected=True)
    pri = c("p", 0, ready_since=1000.0, failback_after=300.0)
    assert decide([inc, pri], now=1200.0).winner == "s"
    assert decide([inc, pri], now=1200.0).failback_at == {"p": 1300.0}
    assert decide([inc, pri], now=1300.0).winner == "p"
    # a failing incumbent under re-test does not keep selection when a standby is Ready
    assert choose([c("s", 0, selected=True, ready=False, testing=True, failing=True),
                   c("t", 10)]) == "t"


_cands = hs.lists(
    hs.builds(Candidate, name=hs.sampled_from("abcdefgh"), created_at=hs.sampled_from("123"),
              requested=hs.booleans(), ready=hs.booleans(), testing=hs.booleans(),
              has_active=hs.booleans(), selected=hs.booleans(),
              priority=hs.sampled_from([0, 10, 20]), ready_since=hs.sampled_from([0.0, 50.0]),
              failing=hs.booleans(), pending=hs.booleans(),
              failback_after=hs.sampled_from([0.0, 300.0])),
    max_size=8, unique_by=lambda c: c.name)


@given(_cands, hs.sampled_from([0.0, 100.0, 1000.0]), hs.randoms())
def test_choose_properties_with_priorities(cands: list[Candidate], now: float,
                                           rnd: Any) -> None:
    cands = [Candidate(c.name, c.created_at, c.requested, c.ready, c.testing,
                       c.has_active or c.ready, c.selected and i == 0, c.priority,
                       c.ready_since, c.failing and not c.ready, c.pending and not c.ready,
                       c.failback_after)
             for i, c in enumerate(cands)]  # at most one incumbent, as the store holds
    winner = choose(cands, now)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert choose(shuffled, now) == winner  # the listing order does not matter
    if winner is None:
        return
    w = next(c for c in cands if c.name == winner)
    assert w.requested and w.has_active  # never a relay that never passed
    if not w.ready:
        assert w.selected  # kept only as the incumbent (last-known-good)
    if not w.selected:  # a change of winner goes to the best-ranked Ready relay
        best = min((c for c in cands if c.requested and c.ready), key=lambda c: c.order)
        assert winner == best.name


def run_validate(*args: str) -> tuple[int, dict[str, Any]]:
    from reconciler.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["validate", "-o", "json", "--strict", *args])
    env = json.loads(buf.getvalue())
    return code, {"errors": env["diagnostics"]}


def test_validate_accepts_a_primary_and_a_standby(tmp_path: Path) -> None:
    """Before, two selected relays in a namespace were a warning (an error under --strict):
    the supported standby setup was flagged as a mistake."""
    def manifest(name: str, priority: int | None) -> dict[str, Any]:
        d = doc(name, "relay.example.com", selected=True)
        d["spec"]["passwordFrom"] = {"env": "SMTP_PASSWORD"}
        d["spec"]["from"] = "app@example.com"
        if priority is not None:
            d["spec"]["priority"] = priority
        return d

    f = tmp_path / "relays.yaml"
    f.write_text(yaml.safe_dump_all([manifest("primary", 0), manifest("standby", 10)]))
    code, report = run_validate("-f", str(f))
    assert code == 0 and report["errors"] == [], report
    f.write_text(yaml.safe_dump_all([manifest("primary", None), manifest("twin", 0)]))
    code, report = run_validate("-f", str(f))
    assert code == 1
    [w] = report["errors"]
    assert "same priority (0)" in w["message"] and w["path"] == "spec.selected"


def test_validate_warns_about_refresh_intervals_that_log_in_too_often(tmp_path: Path) -> None:
    """The same rule as the engine's status warnings (reconciler.refresh)."""
    def manifest(name: str, host: str, interval: str) -> dict[str, Any]:
        d = doc(name, host)
        d["spec"].update(passwordFrom={"env": "SMTP_PASSWORD"}, refreshInterval=interval,
                         **{"from": "app@example.com"})
        return d

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump_all([manifest("zero", "relay.example.com", "0s"),
                                     manifest("gmail", "smtp.gmail.com", "5m"),
                                     manifest("fine", "smtp.gmail.com", "30m")]))
    code, report = run_validate("-f", str(f))
    assert code == 1  # warnings are errors under --strict
    found = {(d["name"], "floor" in d["message"], "throttles logins" in d["message"])
             for d in report["errors"]}
    assert found == {("zero", True, False), ("gmail", False, True)}, report
