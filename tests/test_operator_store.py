"""The Kubernetes store and the Lease elector, in-process against the emulator.

These pin the concurrency contracts the end-to-end tests cannot provoke on demand: a 409
on a status write re-reads and re-applies the engine's decision (never a blind
overwrite), the test memo round-trips in the status write (the older annotation is
read, never written), and two electors never both lead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconciler.runtimes.leader import LeaseElector
from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject, TestMemo
from reconciler.stores.kube import MEMO_ANNOTATION, MEMO_FIELD, KubeStore
from reconciler.stores.kubeapi import Credentials, KubeApi, NotFound, Unreachable, resource_path
from reconciler.stores.kubetypes import KubeObject, as_object
from tests.support.kube_emulator import KubeEmulator
from tests.support.kube_operator import standin_api

API = "smtp.reconciler.dev/v1alpha1"
REF = ObjectRef("ExternalSmtp", "default", "relay")


@pytest.fixture()
async def kube() -> AsyncIterator[tuple[KubeEmulator, KubeApi]]:
    async with standin_api() as pair:
        yield pair


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


async def _restart_reads_the_memo_and_writes_nothing(api: KubeApi, memo: TestMemo) -> KubeStore:
    """A new store (a restarted operator) reads ``memo`` back and hands the engine a status
    without it; a mutator that decides nothing, or the same status and memo, writes
    nothing (no migration write either)."""
    store = KubeStore(api)
    await store.prime()
    got = await store.get(REF)
    assert got is not None and got.memo == memo and got.status == {"observedGeneration": 1}
    before = api.requests
    await store.update_status(REF, lambda cur: None)
    await store.update_status(REF, lambda cur: StatusWrite(dict(cur.status), cur.memo))
    assert api.requests == before
    return store


async def test_memo_goes_into_the_status_write_and_back(kube: Any) -> None:
    """Session 12: the test memo is ``status.testMemo``, written in the verdict's own PUT:
    one request (before: a status PUT, then a PATCH of the memo annotation)."""
    _emu, api = kube
    await _create(api)
    store = KubeStore(api)
    await store.prime()
    memo = TestMemo(digest="sha256:abc", generation=1, tested_at=1.0, due_at=2.0, passed=True)
    sent: list[tuple[str, str]] = []
    api.on_request = lambda verb, resource: sent.append((verb, resource))
    out = await store.update_status(
        REF, lambda cur: StatusWrite(status={"observedGeneration": 1}, memo=memo)
    )
    assert sent == [("PUT", "externalsmtps/status")]
    assert out is not None and out.memo == memo and out.status == {"observedGeneration": 1}
    body = await api.get(resource_path(API, "externalsmtps", "default", "relay"))
    assert body["status"] == {"observedGeneration": 1, MEMO_FIELD: memo.to_json()}
    assert MEMO_ANNOTATION not in (body["metadata"].get("annotations") or {})
    assert body["metadata"]["generation"] == 1  # not a spec change
    # A new store (a restarted operator) reads the memo back from the cluster; the engine
    # never sees the field in the status.
    await _restart_reads_the_memo_and_writes_nothing(api, memo)


async def test_an_older_operators_annotation_memo_is_read_and_never_written(kube: Any) -> None:
    """Objects written before session 12 keep the memo in an annotation: it is the memo
    while the status has none (a restart writes nothing), the next status write carries it
    into the status, and the annotation is never written again."""
    _emu, api = kube
    await _create(api)
    path = resource_path(API, "externalsmtps", "default", "relay")
    old = TestMemo(digest="sha256:old", generation=1, tested_at=1.0, due_at=9.0, passed=True)
    text = json.dumps(old.to_json(), sort_keys=True)
    await api.patch(path, {"metadata": {"annotations": {MEMO_ANNOTATION: text}}})
    await api.patch(path + "/status", {"status": {"observedGeneration": 1}})
    store = await _restart_reads_the_memo_and_writes_nothing(api, old)
    sent: list[tuple[str, str]] = []
    api.on_request = lambda verb, resource: sent.append((verb, resource))
    out = await store.update_status(REF, lambda cur: StatusWrite(
        {**cur.status, "selected": False}, cur.memo))
    assert sent == [("PUT", "externalsmtps/status")]
    assert out is not None and out.memo == old
    body = await api.get(path)
    assert body["status"][MEMO_FIELD] == old.to_json()
    assert body["metadata"]["annotations"][MEMO_ANNOTATION] == text  # left as it was
    # The status memo wins over the annotation from now on.
    new = TestMemo(digest="sha256:new", generation=1, tested_at=5.0, due_at=20.0, passed=True)
    await store.update_status(REF, lambda cur: StatusWrite(dict(cur.status), new))
    again = KubeStore(api)
    await again.prime()
    got = await again.get(REF)
    assert got is not None and got.memo == new
    assert (await api.get(path))["metadata"]["annotations"][MEMO_ANNOTATION] == text


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


async def test_renewing_a_held_lease_is_one_put(kube: Any) -> None:
    """The leader renews the Lease it holds with one PUT carrying the version it last
    wrote (before: GET + PUT every 2 s); a Lease someone else wrote meanwhile answers 409
    and the elector looks at it (GET) and steps down."""
    _emu, api = kube
    elector = LeaseElector(api, namespace="default", name="op", identity="a")
    assert await elector.try_acquire_or_renew() is True  # created
    sent = api.requests
    for _ in range(3):
        assert await elector.try_acquire_or_renew() is True
    assert api.requests == sent + 3
    path = resource_path("coordination.k8s.io/v1", "leases", "default", "op")
    lease = await api.get(path)
    lease["spec"]["holderIdentity"] = "b"  # taken over (its renewTime is live)
    await api.put(path, lease)
    sent = api.requests
    assert await elector.try_acquire_or_renew() is False
    assert api.requests == sent + 2  # the PUT answered 409, then the GET
    assert await elector.try_acquire_or_renew() is False  # standby: GET only
    assert api.requests == sent + 3


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


# --- resourceVersions are opaque: stale watch events are recognised by identity ---------

def _body(rv: str, *, generation: int = 1, uid: str = "u1",
          status: dict[str, Any] | None = None) -> KubeObject:
    return as_object({"apiVersion": API, "kind": "ExternalSmtp",
            "metadata": {"name": "relay", "namespace": "default", "uid": uid,
                         "resourceVersion": rv, "generation": generation},
            "spec": {}, "status": status or {}})


def test_events_older_than_our_write_are_dropped_without_ordering_versions() -> None:
    # Versions that sort the wrong way as numbers and as strings: only identity may count.
    store = KubeStore(KubeApi(Credentials(server="https://127.0.0.1:1")))
    assert store.observe(_body("z9", status={"n": 1}), listed=True)
    with store._writing(("ExternalSmtp", "default", "relay")) as seen:
        pass  # our write returned "a1"; its watch event has not arrived yet
    store._wrote(("ExternalSmtp", "default", "relay"), _body("a1", status={"n": 3}), seen)
    # The event of an earlier write ("m5") arrives after our response: older, dropped.
    assert not store.observe(_body("m5", status={"n": 2}))
    assert store.cached(REF)["status"] == {"n": 3}  # type: ignore[index]
    # Our write's own event: the wait is over, later events are taken again.
    assert store.observe(_body("a1", status={"n": 3}))
    assert store.observe(_body("0", status={"n": 4}))
    assert store.cached(REF)["status"] == {"n": 4}  # type: ignore[index]


def test_our_event_before_our_response_does_not_block_later_events() -> None:
    store = KubeStore(KubeApi(Credentials(server="https://127.0.0.1:1")))
    key = ("ExternalSmtp", "default", "relay")
    store.observe(_body("10", status={"n": 1}), listed=True)
    with store._writing(key) as seen:
        # The watch delivers our write ("11") and someone else's ("12") before our
        # response is read.
        assert store.observe(_body("11", status={"n": 2}))
        assert store.observe(_body("12", status={"n": 9}))
    store._wrote(key, _body("11", status={"n": 2}), seen)
    assert store.cached(REF)["status"] == {"n": 9}  # type: ignore[index]  # not regressed
    assert store.observe(_body("13", status={"n": 10}))  # and nothing is waited for


def test_the_wait_for_our_event_ends_on_relist_generation_uid_or_deletion() -> None:
    store = KubeStore(KubeApi(Credentials(server="https://127.0.0.1:1")))
    key = ("ExternalSmtp", "default", "relay")
    store.observe(_body("1"), listed=True)
    store._wrote(key, _body("3"), [])
    assert not store.observe(_body("2"))
    assert store.observe(_body("4", generation=2))  # a newer generation is newer
    store._wrote(key, _body("6", generation=2), [])
    assert store.observe(_body("5", generation=2), listed=True)  # a re-list is the truth
    store._wrote(key, _body("8", generation=2), [])
    assert store.observe(_body("1", uid="u2"))  # deleted and created again
    store._wrote(key, _body("9", uid="u2"), [])
    store.forget(REF)
    assert store.observe(_body("2", uid="u3"))
    # The safety net: an event never delivered does not freeze the object forever.
    now = [0.0]
    store.clock = lambda: now[0]
    store._wrote(key, _body("11", uid="u3"), [])
    assert not store.observe(_body("10", uid="u3"))
    now[0] = 61.0
    assert store.observe(_body("12", uid="u3"))


async def test_status_write_then_stale_watch_event_keeps_our_write(kube: Any) -> None:
    _emu, api = kube
    created = await _create(api)
    store = KubeStore(api)
    await store.prime()
    out = await store.update_status(
        REF, lambda cur: StatusWrite(status={"observedGeneration": 1}, memo=None))
    assert out is not None
    # The watch now delivers the creation event (older than our write): dropped.
    created.setdefault("kind", "ExternalSmtp")
    assert not store.observe(as_object(created))
    assert store.cached(REF)["status"] == {"observedGeneration": 1}  # type: ignore[index]


def test_unchanged_spec_and_status_are_kept_as_the_same_objects() -> None:
    store = KubeStore(KubeApi(Credentials(server="https://127.0.0.1:1")))
    key = ("ExternalSmtp", "default", "relay")
    first = _body("1", status={"n": 1})
    first["spec"] = {"host": "smtp.example.com", "port": 587}
    assert store.observe(first, listed=True)
    cached = store.cached(REF)
    assert cached is not None
    # Our status write's answer: the spec is equal, so the cached one is kept as it is.
    second = _body("2", status={"n": 2})
    second["spec"] = {"host": "smtp.example.com", "port": 587}
    store._wrote(key, second, [])
    after = store.cached(REF)
    assert after is not None and after is not cached
    assert after["spec"] is cached["spec"] and after["status"] == {"n": 2}
    # Its watch event (the same resourceVersion): the cache already holds that version.
    echo = _body("2", status={"n": 2})
    echo["spec"] = {"host": "smtp.example.com", "port": 587}
    assert store.observe(echo)
    assert store.cached(REF) is after
    # A changed spec is a new object; an equal status is kept.
    third = _body("3", status={"n": 2})
    third["spec"] = {"host": "smtp.example.org", "port": 587}
    assert store.observe(third)
    last = store.cached(REF)
    assert last is not None and last["spec"] == third["spec"]
    assert last["spec"] is not after["spec"] and last["status"] is after["status"]


def test_caching_a_body_interns_leaves_inline_one_call_per_container() -> None:
    """Every status write's answer and watch event is slimmed and interned into the cache:
    the interning makes one Python call per dict or list, not one per value (a call per
    value cost ~8 % of the store's instructions per new resource: the session 12 round 2
    record in docs/benchmarks/operator.md)."""
    import sys

    from reconciler.stores import kube

    now = "2026-12-02T08:00:00Z"
    status: dict[str, Any] = {
        "observedGeneration": 1, "selected": False, "lastTestTime": now,
        "conditions": [{"type": t, "status": "True", "reason": "".join(("Test", "Passed")),
                        "message": "x" * 80, "observedGeneration": 1,
                        "lastTransitionTime": now} for t in ("Ready", "Selected")],
        "active": {"host": "".join(("smtp.", "example.com")), "port": 587,
                   "tlsMode": "starttls", "warnings": ["a", "b"]},
        MEMO_FIELD: {"digest": "sha256:" + "0" * 64, "generation": 1, "testedAt": 1.5,
                     "dueAt": 2.5, "passed": True, "failures": 0}}
    containers = 1 + 1 + 2 + 1 + 1 + 1  # status, conditions, 2 conditions, active, warnings, memo
    calls = 0

    def count(frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code is kube._interned.__code__:
            calls += 1

    sys.setprofile(count)
    try:
        out = kube._interned(status)
    finally:
        sys.setprofile(None)
    assert out == status and out is not status
    assert calls == containers  # before: one per value too (33 here)
    # Equal short strings built apart are one object now; long ones are kept as they are.
    conds = out["conditions"]
    assert status["conditions"][0]["reason"] is not status["conditions"][1]["reason"]
    assert conds[0]["reason"] is conds[1]["reason"] is sys.intern("TestPassed")
    assert out["active"]["host"] is sys.intern("smtp.example.com")
    assert conds[0]["message"] is status["conditions"][0]["message"]


def test_the_index_follows_a_spec_the_cache_got_before_its_event() -> None:
    """The controller indexes the cached body at each event, and the index skips a spec it
    has indexed (the same object).  A new spec can reach the cache before its watch event
    (a GET after a 409); the event then carries the version the cache holds - the index
    must still learn the new references."""
    from reconciler.runtimes.operator.index import DependencyIndex

    def with_secret(rv: str, secret: str, generation: int) -> KubeObject:
        body = _body(rv, generation=generation)
        body["spec"] = {"passwordFrom": {"secretKeyRef": {"name": secret, "key": "p"}}}
        return body

    store = KubeStore(KubeApi(Credentials(server="https://127.0.0.1:1")))
    index = DependencyIndex()
    key = ("ExternalSmtp", "default", "relay")
    store.observe(with_secret("1", "old", 1), listed=True)
    index.update(REF, store.cached(REF))
    assert index.secret_users("default", "old") == {REF}
    store._put(key, with_secret("2", "new", 2))  # what a GET after a conflict does
    assert store.observe(with_secret("2", "new", 2))  # its event: the cached version
    index.update(REF, store.cached(REF))
    assert index.secret_users("default", "new") == {REF}
    assert index.secret_users("default", "old") == set()
    # The same spec object again: nothing to do, and nothing lost.
    index.update(REF, store.cached(REF))
    assert index.secret_users("default", "new") == {REF}
    index.update(REF, None)
    assert index.secret_users("default", "new") == set()


async def test_a_post_whose_reply_is_not_wanted_is_not_decoded_but_still_fails(
        kube: Any) -> None:
    _emu, api = kube
    await _create(api, "one")
    events = resource_path("v1", "events", "default")
    body = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "one.1"},
            "involvedObject": {"kind": "ExternalSmtp", "name": "one", "namespace": "default"},
            "reason": "Test", "message": "m", "type": "Normal"}
    assert await api.post(events, body, reply=False) == {}
    got = await api.get(resource_path("v1", "events", "default", "one.1"))
    assert got["reason"] == "Test"
    with pytest.raises(NotFound):
        await api.post(resource_path("v1", "events", "nowhere"), body, reply=False)
