"""Engine logic with injected functions: conditions, digest/plan, LKG, selection, backoff.

The probe here is a function that answers from a table (the engine's contract is the
Verdict); the end-to-end tests (tests/test_cli_apply*.py) run the real probe against a
real relay.  The store is the real SQLite store in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler import catalog
from reconciler.credentials.base import CredentialError
from reconciler.engine import conditions as cond
from reconciler.engine.backoff import BACKOFF_CAP, backoff_delay, jitter_factor, refresh_delay
from reconciler.engine.reconcile import reconcile
from reconciler.engine.selection import Candidate, choose
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.secret import Secret
from reconciler.stores.base import ObjectRef
from reconciler.stores.local import LocalStore
from tests.support.canary import PASSWORD, assert_no_canary


@dataclass
class Creds:
    probe: ProbeCredentials
    versions: Mapping[str, str]


@dataclass
class Health:
    ready: bool = True
    reason: str = "TokenObtained"
    message: str = "ok"
    version: str | None = "v1"
    warnings: tuple[str, ...] = ()


@dataclass
class Fake:
    """Answers per host: 'pass', or a catalog reason to fail with."""

    outcome: dict[str, str] = field(default_factory=dict)
    password_version: str = "h:1"
    calls: list[str] = field(default_factory=list)
    now: float = 1_000_000.0
    missing_env: bool = False
    health: Health = field(default_factory=Health)

    async def resolve(self, res: ExternalSmtp, provider: OAuth2Provider | None) -> Creds:
        if self.missing_env:
            raise CredentialError("EnvVarNotSet", "environment variable SMTP_PW is not set")
        return Creds(ProbeCredentials(password=Secret(PASSWORD)),
                     {"passwordFrom": self.password_version})

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        self.calls.append(spec.host)
        o = self.outcome.get(spec.host, "pass")
        if o == "pass":
            return Verdict(True, "quit", "TestPassed", "ok", "None", False, 0.01)
        r = catalog.get(o)
        return Verdict(False, "auth", o, r.message, r.action, r.retryable, 0.01)

    async def check(self, provider: OAuth2Provider) -> Health:
        return self.health


def doc(name: str, host: str, *, selected: bool = False, port: int = 587) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": host, "port": port, "authentication": "UsernamePassword",
                     "username": "app@example.test", "startTLS": True,
                     "passwordFrom": {"env": "SMTP_PW"}, "selected": selected}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[LocalStore, Fake, BasicWorld]]:
    store = LocalStore(tmp_path / "state")
    fake = Fake()
    world = BasicWorld(store=store, resolve_fn=fake.resolve, probe_fn=fake.probe,
                       check_provider_fn=fake.check, events=StoreEventSink(store),
                       limits=Limits(4, 2), clock_fn=lambda: fake.now)
    yield store, fake, world
    store.close()


async def apply(store: LocalStore, world: BasicWorld, *docs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for u in store.upsert_many(list(docs), now=world.clock()):
        out[u.obj.ref.name] = await reconcile(u.obj.ref, world)
    return out


def status(store: LocalStore, name: str) -> dict[str, Any]:
    obj = store.get_sync(ObjectRef("ExternalSmtp", "default", name))
    assert obj is not None
    return obj.status


def must(c: dict[str, Any] | None) -> dict[str, Any]:
    assert c is not None
    return c


def ready(st: dict[str, Any]) -> dict[str, Any]:
    c = cond.find(st["conditions"], cond.READY)
    assert c is not None
    return c


async def test_pass_then_idempotent_then_rotation(env: Any) -> None:
    store, fake, world = env
    r = (await apply(store, world, doc("a", "relay.test", selected=True)))["a"]
    assert r.tested and r.action == "tested"
    st = status(store, "a")
    assert ready(st)["status"] == "True" and st["observedGeneration"] == 1
    assert st["activeGeneration"] == 1 and st["selected"] is True
    assert cond.find(st["conditions"], cond.RECONCILING) is None
    assert cond.find(st["conditions"], cond.STALLED) is None
    ltt = ready(st)["lastTransitionTime"]
    # unchanged: no test, no write
    fake.now += 10
    r = (await apply(store, world, doc("a", "relay.test", selected=True)))["a"]
    assert not r.tested and r.action == "skipped" and len(fake.calls) == 1
    assert r.requeue_after is not None and r.requeue_after < 3600 * 1.1
    # rotated secret: new version -> test, same generation
    fake.password_version = "h:2"
    fake.now += 10
    r = (await apply(store, world, doc("a", "relay.test", selected=True)))["a"]
    assert r.tested and len(fake.calls) == 2
    # Ready went Unknown while the new credentials were tested, then True again
    assert ready(status(store, "a"))["status"] == "True"
    # a refresh (same digest, due) keeps Ready True throughout: lastTransitionTime stays
    ltt = ready(status(store, "a"))["lastTransitionTime"]
    fake.now += 3600 * 1.2
    r = (await apply(store, world, doc("a", "relay.test", selected=True)))["a"]
    assert r.tested and len(fake.calls) == 3
    assert ready(status(store, "a"))["lastTransitionTime"] == ltt
    assert_no_canary(store.path.read_bytes(), where="store")


async def test_last_known_good_and_stalled(env: Any) -> None:
    store, fake, world = env
    await apply(store, world, doc("a", "good.test", selected=True))
    fake.outcome["bad.test"] = "AuthenticationFailed"
    r = (await apply(store, world, doc("a", "bad.test", selected=True)))["a"]
    st = r.status
    assert ready(st)["status"] == "False" and ready(st)["reason"] == "AuthenticationFailed"
    assert "generation 2 failed (AuthenticationFailed)" in ready(st)["message"]
    assert "generation 1 remains in use" in ready(st)["message"]
    assert st["activeGeneration"] == 1 and st["active"]["host"] == "good.test"
    assert st["selected"] is True  # last-known-good stays selected
    assert must(cond.find(st["conditions"], cond.STALLED))["status"] == "True"
    assert cond.find(st["conditions"], cond.RECONCILING) is None
    assert ready(st)["observedGeneration"] == 2
    # permanent failure: re-verified at refreshInterval, not earlier
    assert r.requeue_after == pytest.approx(refresh_delay(3600, "ExternalSmtp/default/a"), abs=1)
    reasons = [e.reason for e in store.events_sync(ObjectRef("ExternalSmtp", "default", "a"))]
    assert "LastKnownGoodRetained" in reasons


async def test_never_ready_is_never_active(env: Any) -> None:
    store, fake, world = env
    fake.outcome["bad.test"] = "ConnectionRefused"
    r = (await apply(store, world, doc("a", "bad.test", selected=True)))["a"]
    assert r.status.get("activeGeneration") is None and r.status["selected"] is False
    assert must(cond.find(r.status["conditions"], cond.SELECTED))["reason"] == "NotReady"
    # transient: Reconciling stays True, backoff requeue
    assert must(cond.find(r.status["conditions"], cond.RECONCILING))["status"] == "True"
    assert cond.find(r.status["conditions"], cond.STALLED) is None
    assert r.requeue_after == pytest.approx(backoff_delay(1, "ExternalSmtp/default/a"))
    fake.now += r.requeue_after + 1
    r2 = (await apply(store, world, doc("a", "bad.test", selected=True)))["a"]
    assert r2.tested
    assert r2.requeue_after == pytest.approx(backoff_delay(2, "ExternalSmtp/default/a"))


async def test_selection_conflict_failover_and_delete(env: Any) -> None:
    store, fake, world = env
    await apply(store, world, doc("old", "a.test", selected=True))
    fake.now += 5
    await apply(store, world, doc("new", "b.test", selected=True))
    assert status(store, "old")["selected"] is True
    new = must(cond.find(status(store, "new")["conditions"], cond.SELECTED))
    assert new["status"] == "False" and new["reason"] == "SelectionConflict"
    assert "'old'" in new["message"]
    # the active one fails while another requested one is Ready: failover
    fake.outcome["a2.test"] = "AuthenticationFailed"
    fake.now += 5
    await apply(store, world, doc("old", "a2.test", selected=True))
    assert status(store, "old")["selected"] is False
    assert status(store, "new")["selected"] is True
    evs = [e.reason for e in store.events_sync(ObjectRef("ExternalSmtp", "default", "new"))]
    assert "Failover" in evs
    # delete the active one: nothing left that is Ready and requested except 'old' (failed)
    from reconciler.runtimes.local import delete_refs
    await delete_refs(store, world, [ObjectRef("ExternalSmtp", "default", "new")])
    # 'old' is not Ready and not incumbent: nothing selected
    assert status(store, "old")["selected"] is False


async def test_credentials_error_is_reported_without_test(env: Any) -> None:
    store, fake, world = env
    fake.missing_env = True
    r = (await apply(store, world, doc("a", "relay.test")))["a"]
    assert not r.tested and r.action == "blocked" and fake.calls == []
    assert ready(r.status)["reason"] == "EnvVarNotSet"
    assert must(cond.find(r.status["conditions"], cond.SELECTED))["reason"] == "NotRequested"
    fake.missing_env = False
    r = (await apply(store, world, doc("a", "relay.test")))["a"]
    assert r.tested and ready(r.status)["status"] == "True"


async def test_invalid_stored_manifest_is_stalled(env: Any) -> None:
    store, _fake, world = env
    bad = doc("a", "relay.test")
    bad["spec"]["port"] = 0
    r = (await apply(store, world, bad))["a"]
    assert r.action == "invalid" and r.requeue_after is None
    assert ready(r.status)["reason"] == "InvalidSpec"
    assert must(cond.find(r.status["conditions"], cond.STALLED))["status"] == "True"


def test_choose_rule() -> None:
    def c(name: str, created: str, **kw: bool) -> Candidate:
        base = {"requested": True, "ready": True, "testing": False, "has_active": True,
                "selected": False}
        base.update(kw)
        return Candidate(name, created, **base)

    assert choose([c("b", "1"), c("a", "1")]) == "a"  # same time: by name
    assert choose([c("b", "1"), c("a", "2")]) == "b"  # oldest
    assert choose([c("b", "1"), c("a", "2", selected=True)]) == "a"  # incumbent keeps
    # incumbent not Ready, another Ready: failover
    assert choose([c("b", "1"), c("a", "2", selected=True, ready=False)]) == "b"
    # incumbent not Ready, no other: keeps with last-known-good
    assert choose([c("b", "1", ready=False, has_active=False),
                   c("a", "2", selected=True, ready=False)]) == "a"
    # incumbent no longer requested: released
    assert choose([c("a", "2", selected=True, requested=False)]) is None
    # never Ready: never selected
    assert choose([c("a", "1", ready=False, has_active=False)]) is None
    # testing incumbent keeps it (no flapping mid-test)
    assert choose([c("b", "1"), c("a", "2", selected=True, ready=False, testing=True)]) == "a"


def test_backoff_and_jitter() -> None:
    assert 0.9 <= jitter_factor("x") <= 1.1
    assert jitter_factor("x") == jitter_factor("x")
    assert len({round(jitter_factor(f"r{i}"), 6) for i in range(100)}) > 90
    assert backoff_delay(1, "k") < backoff_delay(2, "k") < backoff_delay(3, "k")
    assert backoff_delay(50, "k") <= BACKOFF_CAP


def test_last_transition_time_only_on_status_change() -> None:
    c1 = cond.set_condition([], "Ready", "False", "A", "m", generation=1, now=0)
    c2 = cond.set_condition(c1, "Ready", "False", "B", "m2", generation=2, now=100)
    assert c2[0]["lastTransitionTime"] == c1[0]["lastTransitionTime"]
    assert c2[0]["observedGeneration"] == 2 and c2[0]["reason"] == "B"
    c3 = cond.set_condition(c2, "Ready", "True", "C", "", generation=2, now=200)
    assert c3[0]["lastTransitionTime"] != c1[0]["lastTransitionTime"]


async def test_refresh_interval_change_moves_due_time_without_test(env: Any) -> None:
    store, fake, world = env
    await apply(store, world, doc("a", "relay.test"))
    d = doc("a", "relay.test")
    d["spec"]["refreshInterval"] = "10m"
    r = (await apply(store, world, d))["a"]
    assert not r.tested and r.action == "inherited" and len(fake.calls) == 1
    assert r.requeue_after == pytest.approx(refresh_delay(600, "ExternalSmtp/default/a"), abs=1)
    assert r.status["observedGeneration"] == 2 and r.status["activeGeneration"] == 2
    # a change of a tested field does test
    d["spec"]["port"] = 2525
    r = (await apply(store, world, d))["a"]
    assert r.tested and len(fake.calls) == 2


from hypothesis import given  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

_cands = hs.lists(
    hs.builds(Candidate, name=hs.sampled_from("abcdefgh"), created_at=hs.sampled_from("123"),
              requested=hs.booleans(), ready=hs.booleans(), testing=hs.booleans(),
              has_active=hs.booleans(), selected=hs.booleans()),
    max_size=8, unique_by=lambda c: c.name)


@given(_cands, hs.randoms())
def test_choose_properties(cands: list[Candidate], rnd: Any) -> None:
    # ready implies a last-known-good (a passed test sets both)
    cands = [Candidate(c.name, c.created_at, c.requested, c.ready, c.testing,
                       c.has_active or c.ready, c.selected) for c in cands]
    winner = choose(cands)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert choose(shuffled) == winner  # order of the listing does not matter
    if winner is None:
        assert not any(c.requested and c.ready for c in cands)
        return
    w = next(c for c in cands if c.name == winner)
    assert w.requested and w.has_active  # never a relay that never passed
    if not w.ready:  # kept only as the incumbent
        assert w.selected
    if not any(c.selected for c in cands):
        ready = sorted((c for c in cands if c.requested and c.ready), key=lambda c: c.order)
        assert winner == ready[0].name  # oldest, then name


async def test_no_inheritance_across_an_interrupted_test(env: Any) -> None:
    """gen 1 passed; gen 2 (other settings) was being tested when the process died; gen 3
    has gen 1's settings again: it must be tested, not inherit a Ready it cannot show."""
    from reconciler.engine.reconcile import _testing_status
    from reconciler.stores.base import StatusWrite

    store, fake, world = env
    await apply(store, world, doc("a", "relay.test"))
    (u,) = store.upsert_many([doc("a", "relay.test", port=2525)])
    await store.update_status(u.obj.ref, lambda cur: StatusWrite(
        dict(_testing_status(cur, cur.generation, True, fake.now)), cur.memo))
    r = (await apply(store, world, doc("a", "relay.test")))["a"]
    assert r.tested and len(fake.calls) == 2
    assert r.status["observedGeneration"] == 3 and ready(r.status)["status"] == "True"
    assert cond.find(r.status["conditions"], cond.RECONCILING) is None
