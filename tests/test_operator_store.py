"""The Kubernetes store and the Lease elector, in-process against the emulator.

These pin the concurrency contracts the end-to-end tests cannot provoke on demand: a 409
on a status write re-reads and re-applies the engine's decision (never a blind
overwrite), the memo annotation round-trips, and two electors never both lead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconciler.runtimes.leader import LeaseElector
from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject, TestMemo
from reconciler.stores.kube import MEMO_ANNOTATION, KubeStore
from reconciler.stores.kubeapi import Credentials, KubeApi, NotFound, Unreachable, resource_path
from tests.support.kube_emulator import KubeEmulator, running_emulator
from tests.support.kube_operator import standin_crd

API = "smtp.reconciler.dev/v1alpha1"
REF = ObjectRef("ExternalSmtp", "default", "relay")


@pytest.fixture()
async def kube() -> AsyncIterator[tuple[KubeEmulator, KubeApi]]:
    async with running_emulator() as (emu, url):
        emu.install_crd(standin_crd("ExternalSmtp", "externalsmtps"))
        emu.install_crd(standin_crd("OAuth2Provider", "oauth2providers"))
        api = KubeApi(Credentials(server=url, token=emu.admin_token,
                                  ssl_context=emu.client_ssl_context()))
        try:
            yield emu, api
        finally:
            await api.close()


async def _create(api: KubeApi, name: str = "relay") -> dict[str, Any]:
    return await api.post(
        resource_path(API, "externalsmtps", "default"),
        {
            "apiVersion": API,
            "kind": "ExternalSmtp",
            "metadata": {"name": name},
            "spec": {"host": "smtp.example.com", "port": 587, "authentication": "None"},
        },
    )


async def test_conflict_rereads_and_reapplies_the_decision(kube: Any) -> None:
    _emu, api = kube
    await _create(api)
    store = KubeStore(api)
    assert await store.prime() == 1
    # Another writer changes status after our cache was filled: our resourceVersion is stale.
    path = resource_path(API, "externalsmtps", "default", "relay", "status")
    await api.patch(path, {"status": {"other": "kept"}})
    seen: list[dict[str, Any]] = []

    def mutate(cur: StoredObject) -> StatusWrite:
        seen.append(dict(cur.status))
        return StatusWrite(status={**cur.status, "mine": True}, memo=cur.memo)

    out = await store.update_status(REF, mutate)
    assert out is not None and out.status == {"other": "kept", "mine": True}
    assert seen == [{}, {"other": "kept"}]  # decided twice: on the stale and on the fresh
    fresh = await api.get(resource_path(API, "externalsmtps", "default", "relay"))
    assert fresh["status"] == {"other": "kept", "mine": True}


async def test_memo_goes_to_an_annotation_and_back(kube: Any) -> None:
    _emu, api = kube
    await _create(api)
    store = KubeStore(api)
    await store.prime()
    memo = TestMemo(digest="sha256:abc", generation=1, tested_at=1.0, due_at=2.0, passed=True)
    out = await store.update_status(
        REF, lambda cur: StatusWrite(status={"observedGeneration": 1}, memo=memo)
    )
    assert out is not None and out.memo == memo
    body = await api.get(resource_path(API, "externalsmtps", "default", "relay"))
    assert MEMO_ANNOTATION in body["metadata"]["annotations"]
    assert body["metadata"]["generation"] == 1  # neither write is a spec change
    # A new store (a restarted operator) reads the memo back from the cluster.
    again = KubeStore(api)
    await again.prime()
    got = await again.get(REF)
    assert got is not None and got.memo == memo and got.status == {"observedGeneration": 1}
    # Nothing to change: no write at all.
    before = api.requests
    await again.update_status(REF, lambda cur: None)
    assert api.requests == before


async def test_missing_and_deleting_objects_are_none(kube: Any) -> None:
    _emu, api = kube
    store = KubeStore(api)
    assert await store.get(REF) is None
    assert await store.update_status(REF, lambda cur: StatusWrite({}, None)) is None
    await api.post(
        resource_path(API, "externalsmtps", "default"),
        {
            "apiVersion": API,
            "kind": "ExternalSmtp",
            "metadata": {"name": "relay", "finalizers": ["x/y"]},
            "spec": {},
        },
    )
    await api.delete(resource_path(API, "externalsmtps", "default", "relay"))
    await store.prime()
    assert await store.get(REF) is None  # being deleted: no longer takes part
    assert await store.list("ExternalSmtp") == []


async def test_two_electors_never_both_lead(kube: Any) -> None:
    _emu, api = kube
    a = LeaseElector(
        api,
        namespace="default",
        name="op",
        identity="a",
        lease_duration=1.5,
        renew_deadline=1.0,
        renew_period=0.2,
        retry_period=0.1,
    )
    b = LeaseElector(
        api,
        namespace="default",
        name="op",
        identity="b",
        lease_duration=1.5,
        renew_deadline=1.0,
        renew_period=0.2,
        retry_period=0.1,
    )
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]  # one wins the create race, the other 409s
    leader, standby = (a, b) if results[0] else (b, a)
    assert await leader.try_acquire_or_renew() is True  # renewing is fine
    assert await standby.try_acquire_or_renew() is False  # the lease is live
    # The leader stops renewing (dies); the standby takes over after the lease duration.
    await asyncio.wait_for(standby.acquire(), 5)
    lease = await api.get(resource_path("coordination.k8s.io/v1", "leases", "default", "op"))
    assert lease["spec"]["holderIdentity"] == standby.identity
    assert lease["spec"]["leaseTransitions"] == 1
    # The old leader notices within its renew deadline that it lost.
    leader.is_leader = True
    await asyncio.wait_for(leader.hold(), 5)
    assert leader.is_leader is False
    # A clean release hands over at once.
    await standby.release()
    assert await leader.try_acquire_or_renew() is True


async def test_api_errors_carry_status_not_bodies(kube: Any) -> None:
    _emu, api = kube
    with pytest.raises(NotFound) as exc:
        await api.get(resource_path(API, "externalsmtps", "default", "nope"))
    assert exc.value.code == 404 and exc.value.reason == "NotFound"
    unreachable = KubeApi(Credentials(server="http://127.0.0.1:9"))
    with pytest.raises(Unreachable) as unr:
        await unreachable.get("/api")
    assert unr.value.code == 0
    await unreachable.close()
