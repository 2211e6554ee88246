"""``KubeStore.changes_since`` and ``shares_objects``: what lets the engine's selection
(engine/selection.py) keep its view of a namespace from run to run and re-read only the
relays whose cached object changed, instead of converting every object of the namespace
on every run (quadratic when most relays ask for selection).

The journal must name every change of the informer cache - a watch event, the answer of
our own write, a re-read, a deletion - and a LIST that changes the cache (a re-list after
``410 Gone`` or a watch outage: events may have been missed) must make the caller list
again.  Were a change missed, selection would decide from a stale view of who is Ready
and who is selected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconciler.engine import selection
from reconciler.engine.world import BasicWorld
from reconciler.runtimes.operator.watching import Reflector
from reconciler.stores.base import Event, ObjectRef, StatusWrite, StoredObject, TestMemo
from reconciler.stores.kube import KubeStore, ref_of
from reconciler.stores.kubeapi import Credentials, KubeApi, resource_path
from reconciler.stores.kubetypes import KubeObject, as_object, name_of, resource_version
from tests.support.kube_operator import standin_api

API = "smtp.reconciler.dev/v1alpha1"
KIND = "ExternalSmtp"
NOW = 2_000_000_000.0
WAIT = 30.0  # a bound on every wait (never reached when the code is right)


def _body(name: str, rv: str, namespace: str = "default", *, uid: str = "u",
          status: dict[str, Any] | None = None) -> KubeObject:
    return as_object({"apiVersion": API, "kind": KIND,
                      "metadata": {"name": name, "namespace": namespace, "uid": uid + name,
                                   "resourceVersion": rv, "generation": 1},
                      "spec": {}, "status": status or {}})


def _offline() -> KubeStore:
    return KubeStore(KubeApi(Credentials(server="https://127.0.0.1:1")))


def test_every_change_of_the_cache_is_named_per_scope() -> None:
    store = _offline()
    for name in ("a", "b"):
        store.observe(_body(name, "1"), listed=True)
    store.observe(_body("c", "1", "other"), listed=True)
    token, names = store.changes_since(KIND, "default", None)
    assert names is None  # no token yet: list
    assert store.observe(_body("a", "2", status={"n": 1}))  # a watch event
    assert store.observe(_body("c", "2", "other"))  # another namespace
    token, names = store.changes_since(KIND, "default", token)
    assert names == {"a"}
    # Our own write's answer, then an event older than our write (dropped), then our
    # write's echo on the watch (the version the cache holds): one change.
    key = (KIND, "default", "b")
    store._wrote(key, _body("b", "5", status={"mine": True}), [])
    assert not store.observe(_body("b", "4"))
    assert store.observe(_body("b", "5", status={"mine": True}))
    token, names = store.changes_since(KIND, "default", token)
    assert names == {"b"}
    assert store.changes_since(KIND, "default", token)[1] == set()  # nothing since
    store.forget(ObjectRef(KIND, "default", "a"))  # a DELETED event
    token, names = store.changes_since(KIND, "default", token)
    assert names == {"a"}
    store.forget(ObjectRef(KIND, "default", "a"))  # not cached any more: no change
    assert store.changes_since(KIND, "default", token)[1] == set()
    assert store.changes_since(KIND, "default", ("not", 0))[1] is None  # not ours
    assert _offline().changes_since(KIND, "default", token)[1] is None  # another store's


def test_a_list_that_changes_the_cache_means_list_again() -> None:
    """A re-list (after 410 Gone or a watch outage) delivers the objects as LIST items
    (``observe(listed=True)``, what Controller.handle does for a Reflector's list): what
    changed while the watch was down is not named, so a token from before answers None.
    A re-list that changes nothing keeps the journal."""
    store = _offline()
    for name in ("a", "b"):
        store.observe(_body(name, "1"), listed=True)
    token, _ = store.changes_since(KIND, "default", None)
    assert store.observe(_body("a", "1"), listed=True)  # the version the cache holds
    token, names = store.changes_since(KIND, "default", token)
    assert names == set()
    assert store.observe(_body("b", "7", status={"selected": True}), listed=True)
    token, names = store.changes_since(KIND, "default", token)
    assert names is None
    assert store.observe(_body("a", "8"))  # in step again from the new token
    assert store.changes_since(KIND, "default", token)[1] == {"a"}


def test_the_journal_is_bounded() -> None:
    store = _offline()
    store.observe(_body("a", "0"), listed=True)
    token, _ = store.changes_since(KIND, "default", None)
    for i in range(1, 5000):
        store.observe(_body("a", str(i)))
    assert store.changes_since(KIND, "default", token)[1] is None  # past its bound: list
    assert len(store._journal[(KIND, "default")][1]) <= 4096


async def test_an_unchanged_body_is_the_same_object_while_held() -> None:
    store = _offline()
    store.observe(_body("a", "1", status={"n": 1}), listed=True)
    store.observe(_body("b", "1"), listed=True)
    ref = ObjectRef(KIND, "default", "a")
    first = await store.get(ref)
    assert first is not None and await store.get(ref) is first
    listed = await store.list(KIND, "default")
    assert listed[0] is first and [o.ref.name for o in listed] == ["a", "b"]
    assert store.observe(_body("a", "2", status={"n": 2}))
    second = await store.get(ref)
    assert second is not None and second is not first and second.status == {"n": 2}
    assert first.status == {"n": 1}  # what was handed out before does not change
    del first, second, listed
    third = await store.get(ref)  # nobody held it: converted again, equal
    assert third is not None and third.status == {"n": 2} and third.version == "2"


# --- with the engine's selection and a real API server ------------------------------------

class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)


class CountingStore(KubeStore):
    lists = 0

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        self.lists += 1
        return await super().list(kind, namespace)


def _ready(ready: bool) -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "TestPassed" if ready else "TestFailed",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": 1}],
            "activeGeneration": 1, "observedGeneration": 1,
            "lastTest": {"passed": ready}}


@pytest.fixture()
async def api() -> AsyncIterator[KubeApi]:
    async with standin_api() as (_emu, client):
        yield client


async def _unexpected(*_args: Any) -> Any:
    raise AssertionError("selection does not test or resolve")


async def test_selection_follows_watch_events_and_relists(api: KubeApi) -> None:
    """Three Ready relays ask for selection; another writer (a second operator replica in
    a rollout, a `kubectl edit --subresource status`) changes their status, seen through
    the operator's real watch (a Reflector) and a re-list.  Selection must follow every
    change while reading only the changed relays between runs."""
    path = resource_path(API, "externalsmtps", "default")
    for name in ("a", "b", "c"):
        await api.post(path, {"apiVersion": API, "kind": KIND, "metadata": {"name": name},
                              "spec": {"host": "smtp.example.com", "selected": True}})
        await api.put(f"{path}/{name}/status",
                      dict(await api.get(f"{path}/{name}"), status=_ready(True)))
    store = CountingStore(api)
    delivered: dict[str, str] = {}
    arrived = asyncio.Event()

    def on_event(body: KubeObject, event_type: str | None) -> None:
        if event_type == "DELETED":
            store.forget(ref_of(body))
        else:
            store.observe(body, listed=event_type is None)
        delivered[name_of(body)] = resource_version(body)
        arrived.set()

    async def seen(name: str, rv: str) -> None:
        async with asyncio.timeout(WAIT):
            while delivered.get(name) != rv:
                arrived.clear()
                await arrived.wait()

    reflector = Reflector(api, path, on_event, kind=KIND, api_version=API)
    await reflector.list()
    watching = asyncio.create_task(reflector.run())
    world = BasicWorld(store=store, resolve_fn=_unexpected, probe_fn=_unexpected,
                       check_provider_fn=_unexpected, events=Sink(), clock_fn=lambda: NOW)

    async def other_writer(name: str, ready: bool) -> str:
        body = await api.get(f"{path}/{name}")
        return resource_version(as_object(await api.put(
            f"{path}/{name}/status", dict(body, status={**body["status"], **_ready(ready)}))))

    async def winner() -> str | None:
        won = await selection.select_scope("default", world)
        selected = [o.ref.name for o in await _fresh(api) if o.status.get("selected")]
        assert selected == ([won] if won else [])  # the cluster agrees: one selected
        return won

    try:
        assert await winner() == "a"
        lists = store.lists
        # a fails (a watch event): b takes over, without listing the namespace.
        await seen("a", await other_writer("a", False))
        assert await winner() == "b"
        assert store.lists == lists
        # b fails while the watch is down; the re-list brings it: c, after listing again.
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        rv = await other_writer("b", False)
        await reflector.list()
        assert delivered["b"] == rv
        assert await winner() == "c"
        assert store.lists == lists + 1
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def _fresh(api: KubeApi) -> list[StoredObject]:
    store = KubeStore(api)
    await store.prime()
    return await store.list(KIND, "default")


async def test_a_write_hands_back_the_object_get_hands_out(api: KubeApi) -> None:
    """The object a status write returns is the one the next read hands out (the cached
    copy of the write's answer, converted once): selection, which keeps the objects it
    wrote, then finds them unchanged instead of converting each relay twice."""
    path = resource_path(API, "externalsmtps", "default")
    await api.post(path, {"apiVersion": API, "kind": KIND, "metadata": {"name": "a"},
                          "spec": {"host": "smtp.example.com"}})
    store = KubeStore(api, finalizer="smtp.reconciler.dev/finalizer")
    await store.prime()
    ref = ObjectRef(KIND, "default", "a")
    memo = TestMemo(digest="sha256:abc", generation=1, tested_at=1.0, due_at=2.0, passed=True)
    status = {"observedGeneration": 1, "selected": True}  # selected: the finalizer first
    out = await store.update_status(ref, lambda cur: StatusWrite(status, memo))
    assert out is not None and out.memo == memo and out.status == status
    assert await store.get(ref) is out
    body = store.cached(ref)
    assert body is not None and "managedFields" not in body["metadata"]
    assert body["metadata"].get("finalizers") == ["smtp.reconciler.dev/finalizer"]
