"""The engine's contract with runtimes and plan: by key, one decision for plan and
reconcile, one list of actions, per-item error backoff, provider reasons reach the relay.

Injected functions (tests/test_engine.py's ``Fake``) over the real SQLite store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import conditions as cond
from reconciler.engine.backoff import ErrorBackoff, backoff_delay, refresh_delay
from reconciler.engine.plan import plan_one
from reconciler.engine.reconcile import PROVIDER_REFRESH, ReconcileAction, reconcile
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.resources import OAuth2Provider
from reconciler.runtimes.local import PassError, reconcile_objects
from reconciler.stores.base import ObjectRef, StatusMutator, StoredObject, StoreError
from reconciler.stores.local import LocalStore
from tests.test_engine import Fake, Health, apply, doc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[LocalStore, Fake, BasicWorld]]:
    store = LocalStore(tmp_path / "state")
    fake = Fake()
    world = BasicWorld(store=store, resolve_fn=fake.resolve, probe_fn=fake.probe,
                       check_provider_fn=fake.check, events=StoreEventSink(store),
                       limits=Limits(4, 2), clock_fn=lambda: fake.now)
    yield store, fake, world
    store.close()


def provider_doc(name: str = "idp", **spec: Any) -> dict[str, Any]:
    base = {"grantType": "ClientCredentials", "clientId": "c",
            "clientSecretFrom": {"env": "IDP_SECRET"},
            "tokenEndpoint": "https://login.example.test/token"}
    base.update(spec)
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
            "metadata": {"name": name, "namespace": "default"}, "spec": base}


def oauth_doc(name: str, provider: str = "idp") -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "relay.test", "port": 587, "authentication": "OAuth2",
                     "username": "app@example.test", "startTLS": True,
                     "oauth2ProviderRef": {"name": provider}, "selected": True}}


async def test_reconcile_reads_the_object_inside_the_pass(env: Any) -> None:
    """A runtime holding only an old snapshot (here: the upsert's, memo None) must not make
    the engine test again: the pass reads the current memo by key.  Before reconcile was
    by key, the local runtime passed such snapshots and this re-tested."""
    store, fake, world = env
    (u,) = store.upsert_many([doc("a", "relay.test")], now=fake.now)
    assert u.obj.memo is None
    first = await reconcile(u.obj.ref, world)
    again = await reconcile(u.obj.ref, world)
    assert first.action == ReconcileAction.TESTED
    assert again.action == ReconcileAction.SKIPPED and len(fake.calls) == 1
    gone = await reconcile(ObjectRef("ExternalSmtp", "default", "nope"), world)
    assert gone.action == ReconcileAction.GONE and gone.requeue_after is None


async def test_plan_guards_an_invalid_stored_provider(env: Any) -> None:
    """plan used its own copy of the provider gate, which validated a Ready provider's
    manifest without a guard: an invalid stored provider crashed `smtpctl plan` with a
    pydantic ValidationError.  Plan and reconcile now share the gate."""
    store, fake, world = env
    bad = provider_doc(tokenEndpoint="http://idp.example.test/token")  # https required
    with pytest.raises(ValueError):
        OAuth2Provider.model_validate(bad)
    (p,) = store.upsert_many([bad], now=fake.now)
    from reconciler.stores.base import StatusWrite

    # a provider whose status still says Ready (e.g. written before the spec changed)
    await store.update_status(p.obj.ref, lambda cur: StatusWrite(
        {"conditions": cond.set_condition([], cond.READY, "True", "TokenObtained", "ok",
                                          generation=1, now=fake.now)}, cur.memo))
    (r,) = store.upsert_many([oauth_doc("o")], now=fake.now)
    item = await plan_one(oauth_doc("o"), store.get_sync(r.obj.ref), world)
    assert "OAuth2Provider 'idp' is invalid" in item.why
    result = await reconcile(r.obj.ref, world)
    ready = cond.of(result.status, cond.READY)
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "OAuth2Provider 'idp' is invalid" in ready["message"]
    assert fake.calls == []


async def test_plan_and_reconcile_agree_on_the_decision(env: Any) -> None:
    store, fake, world = env
    await apply(store, world, doc("a", "relay.test"))
    stored = store.get_sync(ObjectRef("ExternalSmtp", "default", "a"))
    item = await plan_one(doc("a", "relay.test"), stored, world)
    assert not item.test and item.why.startswith("tested; next re-verification in")
    fake.password_version = "h:rotated"
    item = await plan_one(doc("a", "relay.test"), stored, world)
    assert item.test and item.why == "secrets or provider changed"
    changed = doc("a", "relay.test")
    changed["spec"]["refreshInterval"] = "5m"
    fake.password_version = "h:1"
    item = await plan_one(changed, stored, world)
    assert not item.test and "only untested fields changed" in item.why
    assert (await reconcile(stored.ref, world)).action == ReconcileAction.SKIPPED
    fake.now += 4000
    item = await plan_one(doc("a", "relay.test"), stored, world)
    assert item.test and item.why == "re-verification due"


def test_actions_are_one_documented_list() -> None:
    text = (ROOT / "docs" / "engine.md").read_text()
    block = text.split("<!-- actions -->")[1]
    documented = re.findall(r"^\| `([a-z]+)` \|", block, flags=re.M)
    assert documented == [a.value for a in ReconcileAction]


def test_error_backoff_is_per_item_and_exponential() -> None:
    b = ErrorBackoff()
    d1, d2, d3 = b.failure("x"), b.failure("x"), b.failure("x")
    assert d1 < d2 < d3 and d2 == pytest.approx(2 * d1, rel=0.25)
    assert b.failure("y") == pytest.approx(backoff_delay(1, "y#error", base=1.0), rel=1e-9)
    for _ in range(40):
        assert b.failure("x") <= 300.0
    b.success("x")
    assert b.failures("x") == 0 and b.failure("x") == d1


@dataclass
class FlakyStore:
    """The real store, except that status writes of ``broken`` raise (a full disk, an
    unreachable API server)."""

    inner: LocalStore
    broken: set[str]

    async def get(self, ref: ObjectRef) -> StoredObject | None:
        return await self.inner.get(ref)

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        return await self.inner.list(kind, namespace)

    async def update_status(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        if ref.name in self.broken:
            raise StoreError(f"cannot write the status of {ref.name}")
        return await self.inner.update_status(ref, mutate)

    async def record_test(self, record: Any) -> None:
        await self.inner.record_test(record)

    async def record_event(self, event: Any) -> None:
        await self.inner.record_event(event)


async def test_a_store_error_backs_off_that_item_only(env: Any) -> None:
    """One relay whose status cannot be written neither stops the pass of the others nor
    gets retried on a flat timer: its delay doubles per failure and resets on success."""
    store, fake, world = env
    flaky = FlakyStore(store, {"bad"})
    w = BasicWorld(store=flaky, resolve_fn=world.resolve_fn, probe_fn=world.probe_fn,
                   check_provider_fn=world.check_provider_fn, events=world.events,
                   limits=world.limits, clock_fn=world.clock_fn)
    ups = store.upsert_many([doc("good", "good.test"), doc("bad", "bad.test")], now=fake.now)
    refs = [u.obj.ref for u in ups]
    errors = ErrorBackoff()
    delays = []
    for _ in range(3):
        failed: list[PassError] = []
        results = await reconcile_objects(refs, w, errors=errors, failed=failed)
        assert [r.ref.name for r in results] == ["good"]
        assert [f.ref.name for f in failed] == ["bad"] and "cannot write" in failed[0].message
        delays.append(failed[0].retry_after)
    assert delays[0] < delays[1] < delays[2]
    flaky.broken.clear()
    results = await reconcile_objects(refs, w, errors=errors)
    assert {r.ref.name for r in results} == {"good", "bad"}
    assert errors.failures("ExternalSmtp/default/bad") == 0


@pytest.mark.parametrize(("reason", "stalled"), [("OAuth2InvalidClient", True),
                                                 ("OAuth2TokenEndpointUnavailable", False)])
async def test_provider_failure_reaches_the_relay_with_its_own_reason(
        env: Any, reason: str, stalled: bool) -> None:
    """Issue 13: the relay used to say OAuth2ProviderNotReady (retry may help) whatever the
    provider's problem was; now it carries the provider's reason, message and flags."""
    store, fake, world = env
    fake.health = Health(ready=False, reason=reason, message="the provider said no")
    res = await apply(store, world, provider_doc(), oauth_doc("o"))
    st = res["o"].status
    ready = cond.of(st, cond.READY)
    assert ready is not None and ready["reason"] == reason
    assert "OAuth2Provider 'idp' is not Ready: " in ready["message"]
    assert "the provider said no" in ready["message"]
    assert cond.is_true(st, cond.STALLED) is stalled
    assert cond.is_true(st, cond.RECONCILING) is not stalled
    key = "ExternalSmtp/default/o"
    want = refresh_delay(PROVIDER_REFRESH, key) if stalled else backoff_delay(1, key)
    assert res["o"].requeue_after == pytest.approx(want)
    assert fake.calls == []


async def test_provider_not_checked_yet_is_not_ready(env: Any) -> None:
    store, fake, world = env
    (_p, r) = store.upsert_many([provider_doc(), oauth_doc("o")], now=fake.now)
    result = await reconcile(r.obj.ref, world)  # the provider has no status yet
    ready = cond.of(result.status, cond.READY)
    assert ready is not None and ready["reason"] == "OAuth2ProviderNotReady"
    assert cond.is_true(result.status, cond.RECONCILING)
