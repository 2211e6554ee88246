"""The emulator serves small requests while a big one is in progress.

A real kube-apiserver serves each request on its own goroutine: a Lease renewal does not
wait for a 10,000-object LIST to be encoded or a watch to replay its objects (and API
Priority and Fairness gives leader election its own queue).  The emulator has one event
loop; its big requests work in slices (``SLICE_BYTES`` of response, ``SLICE_OBJECTS``
objects filtered, ``SLICE_EVENTS`` watch events) and give the loop back between two
slices, counted by ``KubeEmulator.slices``.  These tests count slices, not seconds: a
renewal must complete within a bounded number of slices of a LIST (or watch replay) that
takes many more, while that LIST is still being rendered, and the LIST must still be
the objects of one instant (its resourceVersion), whole and in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.kube_emulator import KubeEmulator, running_emulator

NS = "big"
OBJECTS = 240
PAYLOAD = "x" * 24_000  # ~32 KiB per Secret once base64-encoded: a list of ~7.7 MB
# Slices a renewal may take: the client's request, the server reading it, the handler,
# the answer and the client reading it are each a few loop iterations.
RENEWAL_SLICES = 40
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/leader"


@pytest.fixture()
async def big() -> AsyncIterator[tuple[KubeEmulator, httpx.AsyncClient, httpx.AsyncClient]]:
    """A strict emulator (HTTPS, tokens, RBAC) holding OBJECTS large Secrets and a Lease;
    one client (one connection) for the big request and another for the renewals, as an
    operator's leader election runs on its own connection."""
    async with running_emulator(namespaces=(NS,)) as (emu, url), \
            httpx.AsyncClient(base_url=url, timeout=30, **emu.http_kwargs()) as bulk, \
            httpx.AsyncClient(base_url=url, timeout=30, **emu.http_kwargs()) as renewals:
        for i in range(OBJECTS):
            emu.create_object({"apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": f"s{i:04d}", "namespace": NS, "labels": {"i": str(i % 2)}},
                "stringData": {"k": PAYLOAD}})
        r = await renewals.post(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", json={
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
        assert r.status_code == 201
        yield emu, bulk, renewals


async def _renew(emu: KubeEmulator, http: httpx.AsyncClient) -> tuple[dict[str, Any], int, int]:
    """GET and PUT the Lease (a leader's renewal); returns the stored Lease, the slices
    the loop had seen when the renewal was answered, and the answers then being rendered
    in slices."""
    lease = (await http.get(LEASE)).json()
    lease["spec"]["renewTime"] = "2026-12-01T08:00:00.000000Z"
    r = await http.put(LEASE, json=lease)
    assert r.status_code == 200, r.text
    return r.json(), emu.slices, emu.rendering_in_slices


async def test_lease_renewal_is_answered_while_a_big_list_is_rendered(
        big: tuple[KubeEmulator, httpx.AsyncClient, httpx.AsyncClient]) -> None:
    """Before: the LIST was encoded in one piece on the loop, so the renewal was not even
    read until the whole list had been (no slices existed)."""
    emu, bulk, renewals = big
    async with bulk.stream("GET", f"/api/v1/namespaces/{NS}/secrets") as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        chunks = r.aiter_raw()
        body = [await anext(chunks)]  # the list is being rendered
        start = emu.slices
        renewal = asyncio.create_task(_renew(emu, renewals))
        body += [chunk async for chunk in chunks]
        end = emu.slices
    lease, answered_at, rendering = await renewal
    assert rendering == 1, "the renewal was answered after the list had been rendered"
    assert answered_at - start <= RENEWAL_SLICES
    assert end - start >= OBJECTS // 4  # a slice ends after the object that passes 64 KiB
    # the list is one instant's objects, whole, in order, as one JSON document
    listing = json.loads(b"".join(body))
    assert [o["metadata"]["name"] for o in listing["items"]] == \
        [f"s{i:04d}" for i in range(OBJECTS)]
    assert int(listing["metadata"]["resourceVersion"]) < \
        int(lease["metadata"]["resourceVersion"])
    assert listing["kind"] == "SecretList" and listing["apiVersion"] == "v1"


async def test_lease_renewal_is_answered_while_a_watch_replays(
        big: tuple[KubeEmulator, httpx.AsyncClient, httpx.AsyncClient]) -> None:
    """A watch without a resourceVersion first sends every object as ADDED (kopf's and
    client-go's reflectors after a restart); the renewal does not wait for that replay."""
    emu, bulk, renewals = big
    params = {"watch": "true", "timeoutSeconds": "30"}
    async with bulk.stream("GET", f"/api/v1/namespaces/{NS}/secrets", params=params) as r:
        lines = r.aiter_lines()
        first = json.loads(await anext(lines))
        start = emu.slices
        renewal = asyncio.create_task(_renew(emu, renewals))
        names = [first["object"]["metadata"]["name"]]
        async for line in lines:
            event = json.loads(line)
            assert event["type"] == "ADDED"
            names.append(event["object"]["metadata"]["name"])
            if len(names) == OBJECTS:
                break
        end = emu.slices
    _lease, answered_at, _rendering = await renewal
    assert answered_at < end, "the renewal was answered after the replay"
    assert answered_at - start <= RENEWAL_SLICES
    assert end - start >= OBJECTS // 4
    assert names == [f"s{i:04d}" for i in range(OBJECTS)]


async def test_pages_and_remaining_item_count(
        big: tuple[KubeEmulator, httpx.AsyncClient, httpx.AsyncClient]) -> None:
    """etcd3 store (GetList): ``remainingItemCount`` only for a list without a label or
    field selector ("Instead of returning inaccurate count for non-empty selectors, we
    return nil"); the continue token still pages a filtered list.  Malformed ``limit`` or
    ``continue``: 400.  Before: a filtered list carried a count; bad options were 500s."""
    _emu, bulk, _renewals = big
    path = f"/api/v1/namespaces/{NS}/secrets"
    page = (await bulk.get(path, params={"limit": "100"})).json()
    assert page["metadata"]["remainingItemCount"] == OBJECTS - 100
    names = [o["metadata"]["name"] for o in page["items"]]
    while page["metadata"].get("continue"):
        page = (await bulk.get(path, params={"limit": "100",
                                             "continue": page["metadata"]["continue"]})).json()
        names += [o["metadata"]["name"] for o in page["items"]]
    assert names == [f"s{i:04d}" for i in range(OBJECTS)]
    odd = (await bulk.get(path, params={"limit": "50", "labelSelector": "i=1"})).json()
    assert len(odd["items"]) == 50 and "remainingItemCount" not in odd["metadata"]
    rest = (await bulk.get(path, params={"limit": "500", "labelSelector": "i=1",
                                         "continue": odd["metadata"]["continue"]})).json()
    assert len(rest["items"]) == OBJECTS // 2 - 50 and "continue" not in rest["metadata"]
    for bad in ({"limit": "ten"}, {"continue": "not base64!"}, {"continue": "WzEsMl0="}):
        r = await bulk.get(path, params=bad)
        assert r.status_code == 400 and r.json()["reason"] == "BadRequest", bad
