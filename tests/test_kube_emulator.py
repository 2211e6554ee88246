"""The emulator's faithfulness, checked against documented API server behaviour.

Each test names the documented rule it checks (Kubernetes API concepts:
https://kubernetes.io/docs/reference/using-api/api-concepts/ and the CRD docs).  The
operator's end-to-end tests are only as good as this emulator, so every behaviour they
rely on is pinned here through the official ``kubernetes`` client or raw HTTP.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import kubernetes
import pytest

from tests.support.kube_emulator import EmulatorThread

G, V, P = "test.example.dev", "v1", "widgets"
ROOT = Path(__file__).resolve().parent.parent

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{P}.{G}"},
    "spec": {
        "group": G,
        "scope": "Namespaced",
        "names": {"plural": P, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": V,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.mode == 'a' || self.size > 5",
                                        "message": "mode b needs size > 5",
                                    }
                                ],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                    "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                                    "owner": {
                                        "type": "string",
                                        "x-kubernetes-validations": [
                                            {
                                                "rule": "self == oldSelf",
                                                "message": "owner is immutable",
                                            }
                                        ],
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


def _new_client(config_file: str) -> Any:
    """kubernetes.config.new_client_from_config (untyped upstream)."""
    new_client: Any = kubernetes.config.new_client_from_config
    return new_client(config_file)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorThread, Any]]:
    with EmulatorThread(lenient=True) as kube:
        cfg = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        client = _new_client(str(cfg))
        ext = kubernetes.client.ApiextensionsV1Api(client)
        ext.create_custom_resource_definition(cast(Any, WIDGET_CRD))
        yield kube, client
        client.close()


@pytest.fixture()
def ns() -> str:
    return "ns-" + uuid.uuid4().hex[:8]


def _co(kube: tuple[EmulatorThread, Any]) -> Any:
    return kubernetes.client.CustomObjectsApi(kube[1])


def _core(kube: tuple[EmulatorThread, Any]) -> Any:
    return kubernetes.client.CoreV1Api(kube[1])


def widget(name: str, size: int = 3, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, **spec},
    }


def _err(exc: pytest.ExceptionInfo[kubernetes.client.ApiException]) -> dict[str, Any]:
    assert exc.value.body is not None
    body: dict[str, Any] = json.loads(exc.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == exc.value.status
    return body


def watch(kube: tuple[EmulatorThread, Any], path: str, **params: str) -> list[dict[str, Any]]:
    """A raw watch that the server ends after timeoutSeconds=1."""
    params = {"watch": "true", "timeoutSeconds": "1", **params}
    with httpx.stream("GET", kube[0].url + path, params=params, timeout=10) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


# --- identity, resourceVersion, generation ----------------------------------------------


def test_create_sets_uid_timestamp_resource_version_and_generation(kube: Any, ns: str) -> None:
    a = _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("a"))
    b = _core(kube).create_namespaced_secret(
        ns, {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    meta = a["metadata"]
    assert uuid.UUID(meta["uid"]) and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and meta["namespace"] == ns
    # resourceVersion is one counter across kinds (etcd's revision), opaque but increasing.
    assert int(b.metadata.resource_version) > int(meta["resourceVersion"])
    assert b.metadata.generation is None  # Secrets have no generation
    assert b.data == {"k": "dg=="} and b.type == "Opaque"  # stringData folded into data


def test_generation_bumps_on_spec_changes_only(kube: Any, ns: str) -> None:
    co = _co(kube)
    co.create_namespaced_custom_object(G, V, ns, P, widget("g"))
    o = co.patch_namespaced_custom_object(G, V, ns, P, "g", {"metadata": {"labels": {"x": "1"}}})
    assert o["metadata"]["generation"] == 1
    o = co.patch_namespaced_custom_object_status(G, V, ns, P, "g", {"status": {"phase": "x"}})
    assert o["metadata"]["generation"] == 1
    o = co.patch_namespaced_custom_object(G, V, ns, P, "g", {"spec": {"size": 4}})
    assert o["metadata"]["generation"] == 2


def test_generation_is_compared_after_defaulting(kube: Any, ns: str) -> None:
    """The strategy compares the decoded (defaulted) object: removing a field that its
    default puts back changes nothing, so it is not a write (before: generation 2 and a
    new resourceVersion, which made every server-side apply of a manifest without the
    defaulted fields look like a spec change to the operator)."""
    co = _co(kube)
    o = co.create_namespaced_custom_object(G, V, ns, P, widget("d"))
    assert o["spec"]["mode"] == "a"
    again = co.patch_namespaced_custom_object(G, V, ns, P, "d", {"spec": {"mode": None}})
    assert again["spec"]["mode"] == "a"
    assert again["metadata"]["generation"] == 1
    assert again["metadata"]["resourceVersion"] == o["metadata"]["resourceVersion"]


def test_noop_write_keeps_resource_version(kube: Any, ns: str) -> None:
    co = _co(kube)
    o = co.create_namespaced_custom_object(G, V, ns, P, widget("n"))
    again = co.patch_namespaced_custom_object(G, V, ns, P, "n", {"spec": {"size": 3}})
    assert again["metadata"]["resourceVersion"] == o["metadata"]["resourceVersion"]


def test_stale_resource_version_is_409_conflict(kube: Any, ns: str) -> None:
    co = _co(kube)
    old = co.create_namespaced_custom_object(G, V, ns, P, widget("c"))
    co.patch_namespaced_custom_object(G, V, ns, P, "c", {"spec": {"size": 5}})
    old["spec"]["size"] = 6
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.replace_namespaced_custom_object(G, V, ns, P, "c", old)
    assert exc.value.status == 409 and _err(exc)["reason"] == "Conflict"
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.patch_namespaced_custom_object_status(
            G,
            V,
            ns,
            P,
            "c",
            {
                "metadata": {"resourceVersion": old["metadata"]["resourceVersion"]},
                "status": {"x": 1},
            },
        )
    assert exc.value.status == 409
    # With the current resourceVersion the same write succeeds.
    cur = co.get_namespaced_custom_object(G, V, ns, P, "c")
    cur["spec"]["size"] = 6
    assert co.replace_namespaced_custom_object(G, V, ns, P, "c", cur)["spec"]["size"] == 6


def test_custom_resource_put_needs_a_resource_version(kube: Any, ns: str) -> None:
    co = _co(kube)
    co.create_namespaced_custom_object(G, V, ns, P, widget("u"))
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.replace_namespaced_custom_object(G, V, ns, P, "u", widget("u", 4))
    assert exc.value.status == 422


def test_create_twice_is_409_already_exists_and_missing_is_404(kube: Any, ns: str) -> None:
    co = _co(kube)
    co.create_namespaced_custom_object(G, V, ns, P, widget("d"))
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.create_namespaced_custom_object(G, V, ns, P, widget("d"))
    assert exc.value.status == 409 and _err(exc)["reason"] == "AlreadyExists"
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.get_namespaced_custom_object(G, V, ns, P, "nope")
    assert exc.value.status == 404 and _err(exc)["reason"] == "NotFound"


# --- status subresource -------------------------------------------------------------------


def test_status_subresource_is_separate(kube: Any, ns: str) -> None:
    co = _co(kube)
    created = co.create_namespaced_custom_object(
        G, V, ns, P, {**widget("s"), "status": {"phase": "from-create"}}
    )
    assert "status" not in created  # status is ignored on create
    o = co.patch_namespaced_custom_object_status(
        G, V, ns, P, "s", {"spec": {"size": 9}, "status": {"phase": "one"}}
    )
    assert o["status"] == {"phase": "one"} and o["spec"]["size"] == 3  # spec ignored on /status
    o = co.patch_namespaced_custom_object(
        G, V, ns, P, "s", {"spec": {"size": 4}, "status": {"phase": "two"}}
    )
    assert o["status"] == {"phase": "one"} and o["spec"]["size"] == 4  # status ignored on main
    o["status"] = {"phase": "three"}
    o["spec"]["size"] = 7
    o = co.replace_namespaced_custom_object_status(G, V, ns, P, "s", o)
    assert o["status"] == {"phase": "three"} and o["spec"]["size"] == 4


def test_status_write_keeps_metadata_as_stored(kube: Any, ns: str) -> None:
    """A ``/status`` write changes only ``.status``: labels, annotations and finalizers sent
    with it are ignored, as apiextensions' ``statusStrategy.PrepareForUpdate`` copies the
    old object and keeps only the new status (and managedFields).  The operator relies on
    it: its finalizer needs a write of its own, before the status write that selects."""
    co = _co(kube)
    meta = {"labels": {"a": "1"}, "annotations": {"x.example/n": "1"},
            "finalizers": ["x.example/keep"]}
    created = co.create_namespaced_custom_object(
        G, V, ns, P, {**widget("m"), "metadata": {"name": "m", **meta}})
    o = dict(created)
    o["metadata"] = {**created["metadata"], "labels": {"a": "2", "b": "1"},
                     "annotations": {"x.example/n": "2"}, "finalizers": ["x.example/other"]}
    o["status"] = {"phase": "put"}
    got = co.replace_namespaced_custom_object_status(G, V, ns, P, "m", o)
    assert got["status"] == {"phase": "put"}
    assert {k: got["metadata"].get(k) for k in meta} == meta
    got = co.patch_namespaced_custom_object_status(G, V, ns, P, "m", {
        "metadata": {"labels": None, "finalizers": None, "annotations": {"y.example/z": "1"}},
        "status": {"phase": "patched"}})
    assert got["status"] == {"phase": "patched"}
    assert {k: got["metadata"].get(k) for k in meta} == meta
    co.patch_namespaced_custom_object(G, V, ns, P, "m", {"metadata": {"finalizers": None}})


def test_empty_metadata_lists_and_maps_are_not_kept_on_create(kube: Any, ns: str) -> None:
    """ObjectMeta's ``labels``, ``annotations``, ``finalizers`` and ``ownerReferences`` are
    ``omitempty``: a real API server answers a create that sent them empty without the key,
    so no client may rely on ``metadata.finalizers`` being there (an update already
    dropped them; a create kept ``[]``)."""
    co = _co(kube)
    empty: dict[str, Any] = {"labels": {}, "annotations": {}, "finalizers": [],
                             "ownerReferences": []}
    created = co.create_namespaced_custom_object(
        G, V, ns, P, {**widget("e"), "metadata": {"name": "e", **empty}})
    stored = co.get_namespaced_custom_object(G, V, ns, P, "e")
    for got in (created, stored):
        assert not set(empty) & set(got["metadata"]), got["metadata"]


# --- list and watch ------------------------------------------------------------------------


def test_list_resource_version_and_watch_resumes_from_it(kube: Any, ns: str) -> None:
    co = _co(kube)
    co.create_namespaced_custom_object(G, V, ns, P, widget("w1"))
    lst = co.list_namespaced_custom_object(G, V, ns, P)
    rv = lst["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in lst["items"]] == ["w1"]
    co.create_namespaced_custom_object(G, V, ns, P, widget("w2"))
    co.patch_namespaced_custom_object(G, V, ns, P, "w1", {"spec": {"size": 2}})
    co.delete_namespaced_custom_object(G, V, ns, P, "w2")
    events = watch(kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}", resourceVersion=rv)
    got = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert got == [("ADDED", "w2"), ("MODIFIED", "w1"), ("DELETED", "w2")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    # Without a resourceVersion a watch starts with the current state as ADDED events.
    events = watch(kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w1")]


def test_watch_from_compacted_version_is_410_gone(kube: Any, ns: str) -> None:
    co = _co(kube)
    co.create_namespaced_custom_object(G, V, ns, P, widget("x"))
    rv = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    co.patch_namespaced_custom_object(G, V, ns, P, "x", {"spec": {"size": 2}})
    kube[0].call(kube[0].emu.compact)
    events = watch(kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}", resourceVersion=rv)
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    # A re-list gives a fresh resourceVersion that can be watched again.
    rv2 = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    assert watch(kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}", resourceVersion=rv2) == []


def test_label_selectors_filter_lists_and_watches(kube: Any, ns: str) -> None:
    co = _co(kube)
    for name, tier in (("l1", "a"), ("l2", "b"), ("l3", "c")):
        body = widget(name)
        body["metadata"]["labels"] = {"tier": tier}
        co.create_namespaced_custom_object(G, V, ns, P, body)

    def names(sel: str) -> list[str]:
        lst = co.list_namespaced_custom_object(G, V, ns, P, label_selector=sel)
        return [i["metadata"]["name"] for i in lst["items"]]

    assert names("tier=a") == ["l1"]
    assert names("tier in (a,b)") == ["l1", "l2"]
    assert names("tier notin (a),tier!=b") == ["l3"]
    assert names("!tier") == []
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.list_namespaced_custom_object(G, V, ns, P, label_selector="tier in a")
    assert exc.value.status == 400
    rv = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    # Relabelling moves objects in and out of a selector: the watch sees ADDED / DELETED.
    co.patch_namespaced_custom_object(G, V, ns, P, "l3", {"metadata": {"labels": {"tier": "a"}}})
    co.patch_namespaced_custom_object(G, V, ns, P, "l1", {"metadata": {"labels": {"tier": "z"}}})
    events = watch(
        kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}", resourceVersion=rv, labelSelector="tier=a"
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "l3"),
        ("DELETED", "l1"),
    ]


def test_field_selector_and_pagination(kube: Any, ns: str) -> None:
    co = _co(kube)
    for i in range(5):
        co.create_namespaced_custom_object(G, V, ns, P, widget(f"p{i}"))
    one = co.list_namespaced_custom_object(G, V, ns, P, field_selector="metadata.name=p3")
    assert [i["metadata"]["name"] for i in one["items"]] == ["p3"]
    seen: list[str] = []
    token = None
    for _ in range(5):
        page = co.list_namespaced_custom_object(G, V, ns, P, limit=2, _continue=token)
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == [f"p{i}" for i in range(5)]


def test_watch_timeout_and_interruption_end_the_stream(kube: Any, ns: str) -> None:
    # timeoutSeconds ends an idle watch (the server side of kopf's reconnect loop).
    assert watch(kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}") == []
    # interrupt_watches() drops open streams, as an API server restart would.
    import threading

    out: list[list[dict[str, Any]]] = []
    t = threading.Thread(
        target=lambda: out.append(
            watch(kube, f"/apis/{G}/{V}/namespaces/{ns}/{P}", timeoutSeconds="30")
        )
    )
    t.start()
    for _ in range(100):
        t.join(0.05)
        kube[0].call(kube[0].emu.interrupt_watches)
        if not t.is_alive():
            break
    assert not t.is_alive() and out == [[]]


def test_watch_parameter_reads_as_apimachinery_reads_it(kube: Any, ns: str) -> None:
    """``ListOptions.Watch`` comes from ``runtime.Convert_Slice_string_To_bool``
    (apimachinery/pkg/runtime/conversion.go): the first value; absent, ``0`` and ``false``
    in any case are false, anything else (``1``, ``True``, ``yes``, the empty string) is a
    watch.  A GET of one object is a get whatever ``watch`` says (RequestInfoFactory only
    turns a collection GET into list/watch).  Before: only ``true``/``1`` (lower-cased)
    watched, ``watch=yes`` or ``watch=`` listed, ``.../widgets/NAME?watch=true`` streamed."""
    _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("w"))
    url = f"{kube[0].url}/apis/{G}/{V}/namespaces/{ns}/{P}"

    def first(query: str) -> dict[str, Any]:
        """The first line of the answer: a watch's first event, or a list's whole body
        (one line); the stream is closed after it."""
        with httpx.stream("GET", f"{url}?{query}", timeout=10) as r:
            assert r.status_code == 200, query
            return dict(json.loads(next(line for line in r.iter_lines() if line.strip())))

    WATCHES = ("watch=true", "watch=1", "watch=True", "watch=TRUE", "watch=t", "watch=yes",
               "watch=", "watch", "watch=true&watch=false")
    LISTS = ("", "watch=false", "watch=0", "watch=FALSE", "watch=False", "watch=fAlSe",
             "watch=false&watch=true")
    for query in WATCHES:
        event = first(query)
        assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "w", query
    for query in LISTS:
        body = first(query)
        assert body["kind"] == "WidgetList", query
        assert [i["metadata"]["name"] for i in body["items"]] == ["w"], query
    for query in ("watch=true", "watch=1"):
        r = httpx.get(f"{url}/w?{query}", timeout=10)
        assert r.status_code == 200 and r.json()["kind"] == "Widget", query


def test_openapi_v3_urls_carry_the_hash_of_their_document(kube: Any, ns: str) -> None:
    """kube-openapi handler3: ``/openapi/v3`` names each group-version's document by the
    upper-case hex SHA-512 of its bytes; clients (kubectl's HTTP cache) key on that URL.
    Before: ``?hash=<resourceVersion>``, the same URL for different documents on two
    emulators that reuse a port after the same number of writes."""
    base = kube[0].url
    paths = httpx.get(f"{base}/openapi/v3", timeout=10).json()["paths"]
    before = {k: v["serverRelativeURL"] for k, v in paths.items()}
    assert {"api/v1", f"apis/{G}/{V}"} <= set(before)
    for url in before.values():
        body = httpx.get(base + url, timeout=10).content
        assert url.endswith("?hash=" + hashlib.sha512(body).hexdigest().upper()), url
    assert len(set(before.values())) == len(before)
    _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("h"))  # a write, same specs
    paths = httpx.get(f"{base}/openapi/v3", timeout=10).json()["paths"]
    assert {k: v["serverRelativeURL"] for k, v in paths.items()} == before


def test_send_initial_events_ends_with_a_bookmark(kube: Any, ns: str) -> None:
    _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("i"))
    events = watch(
        kube,
        f"/apis/{G}/{V}/namespaces/{ns}/{P}",
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


# --- deletion, finalizers, garbage collection -----------------------------------------------


def test_finalizers_hold_deletion_until_removed(kube: Any, ns: str) -> None:
    co = _co(kube)
    body = widget("f")
    body["metadata"]["finalizers"] = ["test.example.dev/cleanup"]
    co.create_namespaced_custom_object(G, V, ns, P, body)
    deleting = co.delete_namespaced_custom_object(G, V, ns, P, "f")
    assert deleting["metadata"]["deletionTimestamp"]
    assert co.get_namespaced_custom_object(G, V, ns, P, "f")["metadata"]["generation"] == 2
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.patch_namespaced_custom_object(
            G, V, ns, P, "f", {"metadata": {"finalizers": ["test.example.dev/cleanup", "other"]}}
        )
    assert exc.value.status == 422
    co.patch_namespaced_custom_object(G, V, ns, P, "f", {"metadata": {"finalizers": None}})
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.get_namespaced_custom_object(G, V, ns, P, "f")
    assert exc.value.status == 404


def test_deleting_a_namespace_deletes_its_content_first(kube: Any, ns: str) -> None:
    """Namespace strategy and controller, NamespaceLifecycle admission: a created
    namespace carries ``spec.finalizers: [kubernetes]``, phase Active and its name label;
    deleting it makes it Terminating, deletes its content (finalizers hold their
    objects), refuses new content with 403, and removes it once empty.  ``default`` may
    not be deleted.  Before: the namespace went at once and its objects stayed."""
    co, core = _co(kube), _core(kube)
    made = core.create_namespace(cast(Any, {"metadata": {"name": ns}}))
    assert made.spec.finalizers == ["kubernetes"] and made.status.phase == "Active"
    assert made.metadata.labels == {"kubernetes.io/metadata.name": ns}
    held = widget("held")
    held["metadata"]["finalizers"] = ["test.example.dev/cleanup"]
    co.create_namespaced_custom_object(G, V, ns, P, held)
    core.create_namespaced_secret(ns, cast(Any, {"metadata": {"name": "plain"}}))
    core.delete_namespace(ns)
    terminating = core.read_namespace(ns)
    assert terminating.status.phase == "Terminating"
    assert terminating.metadata.deletion_timestamp is not None
    assert core.list_namespaced_secret(ns).items == []  # deleted by the controller
    assert co.get_namespaced_custom_object(G, V, ns, P, "held")["metadata"][
        "deletionTimestamp"]
    with pytest.raises(kubernetes.client.ApiException) as exc:
        core.create_namespaced_secret(ns, cast(Any, {"metadata": {"name": "late"}}))
    body = _err(exc)
    assert exc.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (f'secrets "late" is forbidden: unable to create new content in '
                               f"namespace {ns} because it is being terminated")
    co.patch_namespaced_custom_object(G, V, ns, P, "held", {"metadata": {"finalizers": None}})
    with pytest.raises(kubernetes.client.ApiException) as exc:
        core.read_namespace(ns)
    assert exc.value.status == 404
    with pytest.raises(kubernetes.client.ApiException) as exc:
        core.delete_namespace("default")
    assert exc.value.status == 403
    assert core.read_namespace("default").status.phase == "Active"


def test_owner_references_are_garbage_collected(kube: Any, ns: str) -> None:
    owner = _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("owner"))
    ref = {
        "apiVersion": f"{G}/{V}",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    _core(kube).create_namespaced_secret(
        ns, {"metadata": {"name": "dep", "ownerReferences": [ref]}}
    )
    _co(kube).delete_namespaced_custom_object(G, V, ns, P, "owner")
    assert _core(kube).list_namespaced_secret(ns).items == []


def test_garbage_collection_keeps_dependents_with_a_live_owner_and_orphans(
        kube: Any, ns: str) -> None:
    """garbagecollector.attemptToDeleteItem: a dependent with another live owner is kept
    and only loses the dangling reference (before: deleted as soon as any owner went);
    ``propagationPolicy: Orphan`` keeps every dependent without the reference."""
    co, core = _co(kube), _core(kube)

    def ref(obj: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{G}/{V}", "kind": "Widget", "name": obj["metadata"]["name"],
                "uid": obj["metadata"]["uid"]}

    a = co.create_namespaced_custom_object(G, V, ns, P, widget("a"))
    b = co.create_namespaced_custom_object(G, V, ns, P, widget("b"))
    core.create_namespaced_secret(ns, {"metadata": {"name": "two-owners",
                                                    "ownerReferences": [ref(a), ref(b)]}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "of-b",
                                                    "ownerReferences": [ref(b)]}})
    co.delete_namespaced_custom_object(G, V, ns, P, "a")
    kept = core.read_namespaced_secret("two-owners", ns)
    assert [r.name for r in kept.metadata.owner_references] == ["b"]
    co.delete_namespaced_custom_object(G, V, ns, P, "b",
                                       body={"propagationPolicy": "Orphan"})
    names = {s.metadata.name: s for s in core.list_namespaced_secret(ns).items}
    assert set(names) == {"two-owners", "of-b"}
    assert not names["of-b"].metadata.owner_references


def test_delete_precondition_on_resource_version(kube: Any, ns: str) -> None:
    o = _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("pre"))
    _co(kube).patch_namespaced_custom_object(G, V, ns, P, "pre", {"spec": {"size": 2}})
    with pytest.raises(kubernetes.client.ApiException) as exc:
        _co(kube).delete_namespaced_custom_object(
            G,
            V,
            ns,
            P,
            "pre",
            body={"preconditions": {"resourceVersion": o["metadata"]["resourceVersion"]}},
        )
    assert exc.value.status == 409


# --- built-in kinds ----------------------------------------------------------------------


def test_leases_have_optimistic_concurrency(kube: Any, ns: str) -> None:
    coord = kubernetes.client.CoordinationV1Api(kube[1])
    lease = coord.create_namespaced_lease(
        ns,
        cast(Any, {
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        }),
    )
    stale = coord.read_namespaced_lease("leader", ns)
    assert lease.spec is not None and stale.spec is not None
    lease.spec.holder_identity = "b"
    coord.replace_namespaced_lease("leader", ns, lease)
    stale.spec.holder_identity = "c"
    with pytest.raises(kubernetes.client.ApiException) as exc:
        coord.replace_namespaced_lease("leader", ns, stale)
    assert exc.value.status == 409
    spec = coord.read_namespaced_lease("leader", ns).spec
    assert spec is not None and spec.holder_identity == "b"


def test_events_can_be_posted_and_listed(kube: Any, ns: str) -> None:
    core = _core(kube)
    core.create_namespaced_event(
        ns,
        {
            "metadata": {"generateName": "w."},
            "reason": "Ready",
            "message": "became Ready",
            "type": "Normal",
            "involvedObject": {"kind": "Widget", "name": "w", "namespace": ns},
        },
    )
    items = core.list_namespaced_event(ns).items
    assert (
        len(items) == 1 and items[0].metadata.name.startswith("w.") and items[0].reason == "Ready"
    )


# --- CRD schema validation ------------------------------------------------------------------


def test_schema_violation_is_422_invalid_with_causes(kube: Any, ns: str) -> None:
    with pytest.raises(kubernetes.client.ApiException) as exc:
        _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("bad", size=0))
    body = _err(exc)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.size"
    assert "greater than or equal to 1" in body["message"]


def test_cel_rules_are_enforced(kube: Any, ns: str) -> None:
    co = _co(kube)
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.create_namespaced_custom_object(G, V, ns, P, widget("cel", size=2, mode="b"))
    assert exc.value.status == 422 and "mode b needs size > 5" in _err(exc)["message"]
    co.create_namespaced_custom_object(G, V, ns, P, widget("cel", size=6, mode="b", owner="x"))
    # A transition rule (oldSelf) applies on update only.
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.patch_namespaced_custom_object(G, V, ns, P, "cel", {"spec": {"owner": "y"}})
    assert exc.value.status == 422 and "owner is immutable" in _err(exc)["message"]


def test_unknown_fields_are_pruned_and_defaults_applied(kube: Any, ns: str) -> None:
    o = _co(kube).create_namespaced_custom_object(G, V, ns, P, widget("d1", bogus=True))
    assert o["spec"] == {"size": 3, "mode": "a"}


def test_created_crd_is_discoverable(kube: Any) -> None:
    res = httpx.get(kube[0].url + f"/apis/{G}/{V}", timeout=10).json()
    names = {r["name"]: r for r in res["resources"]}
    assert names[P]["kind"] == "Widget" and names[P]["namespaced"] is True
    assert f"{P}/status" in names


def test_our_generated_crds_validate_external_smtp(tmp_path: Path) -> None:
    with EmulatorThread(crd_dir=ROOT / "manifests" / "crds", lenient=True) as kube:
        client = _new_client(
            str(kube.write_kubeconfig(tmp_path / "config"))
        )
        co = kubernetes.client.CustomObjectsApi(client)
        good = {
            "apiVersion": "smtp.reconciler.dev/v1alpha1",
            "kind": "ExternalSmtp",
            "metadata": {"name": "ok"},
            "spec": {
                "host": "smtp.example.com",
                "port": 587,
                "startTLS": True,
                "authentication": "UsernamePassword",
                "username": "u",
                "passwordFrom": {"secretKeyRef": {"name": "s", "key": "password"}},
            },
        }
        created = cast(dict[str, Any], co.create_namespaced_custom_object(
            "smtp.reconciler.dev", "v1alpha1", "default", "externalsmtps", good
        ))
        assert created["metadata"]["generation"] == 1
        bad = json.loads(json.dumps(good))
        bad["metadata"]["name"] = "bad"
        del bad["spec"]["passwordFrom"]  # cross-field rule: UsernamePassword needs passwordFrom
        with pytest.raises(kubernetes.client.ApiException) as exc:
            co.create_namespaced_custom_object(
                "smtp.reconciler.dev", "v1alpha1", "default", "externalsmtps", bad
            )
        assert exc.value.status == 422
        # CRDs installed up front are stored objects like any other, with their names
        # in discovery (before: served but not stored, so `kubectl get esmtp` failed)
        ext = kubernetes.client.ApiextensionsV1Api(client)
        crd = ext.read_custom_resource_definition("externalsmtps.smtp.reconciler.dev")
        assert crd.status is not None and crd.status.conditions is not None
        assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
        found = httpx.get(f"{kube.url}/apis/smtp.reconciler.dev/v1alpha1", timeout=10).json()
        entry = next(r for r in found["resources"] if r["name"] == "externalsmtps")
        assert "esmtp" in entry["shortNames"]
        client.close()


async def test_fault_injection_with_kmock_reactions_still_works() -> None:
    """Tests may add kmock reactions (e.g. a 409 storm); the emulator then routes every
    request through kmock's matcher so the reaction takes precedence."""
    import kmock

    from tests.support.kube_emulator import running_emulator

    async with running_emulator(lenient=True) as (emu, url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            r = await http.post("/api/v1/namespaces/x/secrets", json={"metadata": {"name": "s"}})
            assert r.status_code == 201
            emu["get", kmock.resource("", "v1", "secrets")] << 503
            assert (await http.get("/api/v1/namespaces/x/secrets/s")).status_code == 503
            # Writes still reach the emulated API (no reaction matches them).
            r = await http.patch(
                "/api/v1/namespaces/x/secrets/s",
                json={"metadata": {"labels": {"a": "b"}}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert r.status_code == 200 and r.json()["metadata"]["labels"] == {"a": "b"}
            # So do lists (rendered in slices on the direct path; one document here).
            r = await http.post("/api/v1/namespaces/x/configmaps", json={"metadata": {"name": "c"}})
            assert r.status_code == 201
            listed = await http.get("/api/v1/namespaces/x/configmaps")
            assert listed.status_code == 200, listed.text
            assert listed.json()["kind"] == "ConfigMapList"
            assert [o["metadata"]["name"] for o in listed.json()["items"]] == ["c"]
