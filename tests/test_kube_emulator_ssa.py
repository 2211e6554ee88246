"""Server-side apply and managedFields in the emulator, rule by rule.

Two layers:

* the structured-merge-diff rules (tests/support/kube_ssa.py) replayed on the scenarios of
  ``sigs.k8s.io/structured-merge-diff/merge/*_test.go`` (named in each case): same
  operations, same resulting object, same ownership;
* the API server around them over HTTP (``k8s.io/apiserver/pkg/endpoints/handlers/patch.go``,
  ``k8s.io/apimachinery/pkg/util/managedfields/internal``, the "Server-Side Apply"
  reference: https://kubernetes.io/docs/reference/using-api/server-side-apply/):
  ``application/apply-patch+yaml``, ``fieldManager`` required, conflicts (409, the real
  message and causes) unless ``force=true``, removal of what an applier stops applying,
  create-by-apply, ``/status`` apply, update managers, the client-side to server-side
  hand-over, ``dryRun``.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.support import kube_ssa
from tests.support.kube_emulator import EmulatorThread
from tests.support.kube_ssa import FieldManager, Type

# --- structured-merge-diff scenarios ----------------------------------------------------


def f(name: str) -> kube_ssa.PE:
    return ("f", name)


def v(value: Any) -> kube_ssa.PE:
    return ("v", kube_ssa.go_json(value))


def k(**fields: Any) -> kube_ssa.PE:
    return ("k", tuple(sorted((n, kube_ssa.go_json(x)) for n, x in fields.items())))


def P(*parts: Any) -> kube_ssa.Path:  # SMD's _P
    return tuple(f(p) if isinstance(p, str) else p for p in parts)


LEAF = Type("map", fields={"numeric": Type("scalar", "numeric"),
                           "string": Type("scalar", "string"),
                           "bool": Type("scalar", "boolean")})
SET = Type("map", fields={"list": Type("list", elem=Type("scalar", "string"),
                                       list_type="set")})
ASSOC = Type("map", fields={"list": Type("list", list_type="map", keys=("name",), elem=Type(
    "map", fields={"name": Type("scalar", "string"), "value": Type("scalar", "numeric")}))})


def replay(t: Type, ops: list[tuple[str, str, str]]
           ) -> tuple[dict[str, Any], dict[str, frozenset[kube_ssa.Path]]]:
    """Run (op, manager, yaml) operations; op is apply | force | update."""
    fm = FieldManager(t, "v1")
    obj: dict[str, Any] | None = None
    managed: kube_ssa.Managed = {}
    for op, manager, text in ops:
        cfg = yaml.safe_load(textwrap.dedent(text)) or {}
        if op == "update":
            managed = fm.update(obj, cfg, managed, manager)
            obj = cfg
        else:
            new, managed = fm.apply(obj, cfg, managed, manager, op == "force")
            obj = new if new is not None else obj
    return obj or {}, {m.manager: e.fields for m, e in managed.items()}


def test_leaf_apply_update_apply_no_conflict() -> None:
    """merge/leaf_test.go apply_update_apply_no_conflict: an update owns only what it
    changed; the applier keeps the rest and may change its own fields."""
    obj, managed = replay(LEAF, [
        ("apply", "default", "numeric: 1\nstring: string"),
        ("update", "controller", "numeric: 1\nstring: string\nbool: true"),
        ("apply", "default", "numeric: 2\nstring: string"),
    ])
    assert obj == {"numeric": 2, "string": "string", "bool": True}
    assert managed == {"default": {P("numeric"), P("string")}, "controller": {P("bool")}}


def test_leaf_apply_update_apply_with_conflict_then_force() -> None:
    """merge/leaf_test.go apply_update_apply_with_conflict: changing a field an updater
    set is a conflict naming it; a forced apply takes it over."""
    ops = [("apply", "default", "numeric: 1\nstring: string"),
           ("update", "controller", "numeric: 1\nstring: controller string\nbool: true")]
    replay(LEAF, ops)
    with pytest.raises(kube_ssa.ConflictError) as exc:
        replay(LEAF, [*ops, ("apply", "default", "numeric: 2\nstring: user string")])
    assert [(c.manager.manager, c.path) for c in exc.value.conflicts] == [
        ("controller", P("string"))]
    obj, managed = replay(LEAF, [*ops, ("force", "default", "numeric: 2\nstring: user string")])
    assert obj == {"numeric": 2, "string": "user string", "bool": True}
    assert managed == {"default": {P("numeric"), P("string")}, "controller": {P("bool")}}


def test_leaf_apply_twice_remove() -> None:
    """merge/leaf_test.go apply_twice_remove: fields an applier stops applying, owned by
    nobody else, are removed."""
    obj, managed = replay(LEAF, [
        ("apply", "default", "numeric: 1\nstring: string\nbool: false"),
        ("apply", "default", "string: new string"),
    ])
    assert obj == {"string": "new string"}
    assert managed == {"default": {P("string")}}


def test_leaf_update_apply_omits() -> None:
    """merge/leaf_test.go update_apply_omits: a field an updater took over stays when the
    applier stops applying it."""
    obj, managed = replay(LEAF, [
        ("apply", "default", "numeric: 2"),
        ("update", "controller", "numeric: 1"),
        ("apply", "default", ""),
    ])
    assert obj == {"numeric": 1}
    assert managed == {"controller": {P("numeric")}}


def test_set_apply_update_apply_no_overlap_keeps_order() -> None:
    """merge/set_test.go apply_update_apply_no_overlap: set items merge by value; the
    merged order keeps live items in place around the applied ones."""
    obj, managed = replay(SET, [
        ("apply", "default", "list: [a, c]"),
        ("update", "controller", "list: [a, b, c, d]"),
        ("apply", "default", "list: [a, aprime, c, cprime]"),
    ])
    assert obj == {"list": ["a", "b", "aprime", "c", "d", "cprime"]}
    assert managed == {
        "default": {P("list", v("a")), P("list", v("aprime")), P("list", v("c")),
                    P("list", v("cprime"))},
        "controller": {P("list", v("b")), P("list", v("d"))}}


def test_set_apply_update_apply_with_overlap_shares_ownership() -> None:
    """merge/set_test.go apply_update_apply_with_overlap: applying an item another manager
    set, unchanged, is shared ownership, not a conflict."""
    obj, managed = replay(SET, [
        ("apply", "default", "list: [a, c]"),
        ("update", "controller", "list: [a, b, c, d]"),
        ("apply", "default", "list: [a, b, c]"),
    ])
    assert obj == {"list": ["a", "b", "c", "d"]}
    assert managed == {"default": {P("list", v("a")), P("list", v("b")), P("list", v("c"))},
                       "controller": {P("list", v("b")), P("list", v("d"))}}


@pytest.mark.parametrize(("ops", "expected"), [
    # merge/set_test.go apply_twice_reorder
    ([("apply", "default", "list: [a, b, c, d]"), ("apply", "default", "list: [a, d, c, b]")],
     ["a", "d", "c", "b"]),
    # merge/set_test.go apply_update_apply_reorder: a reordering update owns nothing
    ([("apply", "default", "list: [a, b, c, d]"), ("update", "controller", "list: [a, d, c, b]"),
      ("apply", "default", "list: [a, b, c, d]")], ["a", "b", "c", "d"]),
])
def test_set_reorder(ops: list[tuple[str, str, str]], expected: list[str]) -> None:
    obj, managed = replay(SET, ops)
    assert obj == {"list": expected}
    assert managed == {"default": {P("list", v(x)) for x in "abcd"}}


def test_associative_list_removes_obsolete_applied_items() -> None:
    """merge/key_test.go removing_obsolete_applied_structs: list-map items are owned by
    key; an item no longer applied is removed."""
    obj, managed = replay(ASSOC, [
        ("apply", "default", "list: [{name: a, value: 1}]"),
        ("apply", "default", "list: [{name: b, value: 2}]"),
    ])
    assert obj == {"list": [{"name": "b", "value": 2}]}
    assert managed == {"default": {P("list", k(name="b")), P("list", k(name="b"), "name"),
                                   P("list", k(name="b"), "value")}}


def test_multiple_appliers_remove_one() -> None:
    """merge/multiple_appliers_test.go remove_one: one applier dropping its items leaves
    the other applier's alone."""
    obj, managed = replay(ASSOC, [
        ("apply", "apply-one", "list: [{name: a}, {name: b}]"),
        ("apply", "apply-two", "list: [{name: c}]"),
        ("apply", "apply-one", "list: [{name: a}]"),
    ])
    assert obj == {"list": [{"name": "a"}, {"name": "c"}]}
    assert managed == {"apply-one": {P("list", k(name="a")), P("list", k(name="a"), "name")},
                       "apply-two": {P("list", k(name="c")), P("list", k(name="c"), "name")}}


def test_multiple_appliers_same_value_no_conflict_change_value_conflict() -> None:
    """merge/multiple_appliers_test.go same_value_no_conflict / change_value_yes_conflict."""
    one = ("apply", "apply-one", "list: [{name: a, value: 0}]")
    _obj, managed = replay(ASSOC, [one, ("apply", "apply-two", "list: [{name: a, value: 0}]")])
    assert managed["apply-one"] == managed["apply-two"] == {
        P("list", k(name="a")), P("list", k(name="a"), "name"), P("list", k(name="a"), "value")}
    with pytest.raises(kube_ssa.ConflictError) as exc:
        replay(ASSOC, [one, ("apply", "apply-two", "list: [{name: a, value: 1}]")])
    assert [(c.manager.manager, kube_ssa.path_string(c.path)) for c in exc.value.conflicts] \
        == [("apply-one", '.list[name="a"].value')]


_ELEMENT = Type("map", fields={
    "key": Type("scalar", "string"), "id": Type("scalar", "numeric"),
    "value": Type("map", elem=Type("scalar", "string")), "bv": Type("scalar", "boolean"),
    "nv": Type("scalar", "numeric")})
MERGE_TYPES = Type("map", fields={
    "list": Type("list", elem=_ELEMENT, list_type="map", keys=("key", "id")),
    "atomicList": Type("list", elem=Type("scalar", "string"), atomic=True)})


@pytest.mark.parametrize(("lhs", "rhs", "out"), [
    ('{"list":[{"key":"a","id":1,"value":{"a":"a"}}]}',
     '{"list":[{"key":"a","id":2,"value":{"a":"a"}}]}',
     '{"list":[{"key":"a","id":1,"value":{"a":"a"}},{"key":"a","id":2,"value":{"a":"a"}}]}'),
    ('{"list":[{"key":"a","id":1},{"key":"b","id":1}]}',
     '{"list":[{"key":"a","id":1},{"key":"a","id":2}]}',
     '{"list":[{"key":"a","id":1},{"key":"b","id":1},{"key":"a","id":2}]}'),
    ('{"list":[{"key":"b","id":2}]}',
     '{"list":[{"key":"a","id":1},{"key":"b","id":2},{"key":"c","id":3}]}',
     '{"list":[{"key":"a","id":1},{"key":"b","id":2},{"key":"c","id":3}]}'),
    ('{"list":[{"key":"a","id":1},{"key":"b","id":2},{"key":"c","id":3}]}',
     '{"list":[{"key":"c","id":3},{"key":"b","id":2}]}',
     '{"list":[{"key":"a","id":1},{"key":"c","id":3},{"key":"b","id":2}]}'),
    ('{"list":[{"key":"a","id":1},{"key":"b","id":2},{"key":"c","id":3}]}',
     '{"list":[{"key":"c","id":3},{"key":"a","id":1}]}',
     '{"list":[{"key":"b","id":2},{"key":"c","id":3},{"key":"a","id":1}]}'),
    ('{"atomicList":["a","a","a"]}', '{"atomicList":null}', '{"atomicList":null}'),
    ('{"atomicList":["a","b","c"]}', '{"atomicList":[]}', '{"atomicList":[]}'),
    ('{"list":[{"key":"a","id":1,"bv":true},{"key":"b","id":2},'
     '{"key":"a","id":1,"bv":false,"nv":2}]}',
     '{"list":[{"key":"a","id":1,"nv":3},{"key":"c","id":3},{"key":"b","id":2}]}',
     '{"list":[{"key":"a","id":1,"nv":3},{"key":"c","id":3},{"key":"b","id":2}]}'),
    ('{"list":[{"key":"a","id":1,"nv":1},{"key":"a","id":1,"nv":2}]}', '{"list":[]}',
     '{"list":[{"key":"a","id":1,"nv":1},{"key":"a","id":1,"nv":2}]}'),
    ('{"list":[{"key":"a","id":1,"nv":1},{"key":"a","id":1,"nv":2}]}', '{}',
     '{"list":[{"key":"a","id":1,"nv":1},{"key":"a","id":1,"nv":2}]}'),
])
def test_merge_triplets(lhs: str, rhs: str, out: str) -> None:
    """typed/merge_test.go (associative list keyed by key+id, atomic list): the merged
    order, duplicates in the live list, null and empty lists."""
    merged = kube_ssa.merge(json.loads(lhs), json.loads(rhs), MERGE_TYPES)
    assert merged == json.loads(out)
    assert [kube_ssa.item_pe(MERGE_TYPES.fields["list"], x) for x in merged.get("list") or []] \
        == [kube_ssa.item_pe(MERGE_TYPES.fields["list"], x)
            for x in json.loads(out).get("list") or []]


def test_fields_v1_encoding_round_trips() -> None:
    """fieldpath/serialize.go: members are ``{}``, a member with children carries ``"."``,
    path elements are ``f:``, ``k:{json}``, ``v:json``, ``i:n``."""
    paths = frozenset({P("spec"), P("spec", "port"), P("metadata", "labels", "app"),
                       P("status", "conditions", k(type="Ready")),
                       P("status", "conditions", k(type="Ready"), "status"),
                       P("metadata", "finalizers", v("x/y"))})
    encoded = kube_ssa.to_fields_v1(paths)
    assert encoded == {
        "f:metadata": {"f:finalizers": {'v:"x/y"': {}}, "f:labels": {"f:app": {}}},
        "f:spec": {".": {}, "f:port": {}},
        "f:status": {"f:conditions": {'k:{"type":"Ready"}': {".": {}, "f:status": {}}}},
    }
    assert kube_ssa.from_fields_v1(encoded) == paths


# --- the API server around it -----------------------------------------------------------

G, V = "ssa.example.dev", "v1"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": f"gadgets.{G}"},
    "spec": {"group": G, "scope": "Namespaced",
             "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
             "versions": [{"name": V, "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "properties": {
                                   "host": {"type": "string"},
                                   "port": {"type": "integer"},
                                   "mode": {"type": "string", "default": "a"},
                                   "tags": {"type": "array", "items": {"type": "string"},
                                            "x-kubernetes-list-type": "set"},
                                   "hosts": {"type": "array", "items": {"type": "string"}},
                                   "options": {"type": "object",
                                               "additionalProperties": {"type": "string"}}}},
                               "status": {"type": "object", "properties": {
                                   "conditions": {
                                       "type": "array", "x-kubernetes-list-type": "map",
                                       "x-kubernetes-list-map-keys": ["type"],
                                       "items": {"type": "object", "required": ["type"],
                                                 "properties": {
                                                     "type": {"type": "string"},
                                                     "status": {"type": "string"}}}}}}}}}}]}}
APPLY = {"Content-Type": "application/apply-patch+yaml"}
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with EmulatorThread(lenient=True) as kube, \
            httpx.Client(base_url=kube.url, timeout=10) as client:
        r = client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=CRD)
        assert r.status_code == 201, r.text
        yield client


@pytest.fixture()
def url() -> str:
    return f"/apis/{G}/{V}/namespaces/ns-{uuid.uuid4().hex[:8]}/gadgets/g"


def gadget(spec: dict[str, Any] | None = None, **extra: Any) -> str:
    doc = {"apiVersion": f"{G}/{V}", "kind": "Gadget", "metadata": {"name": "g"}, **extra}
    if spec is not None:
        doc["spec"] = spec
    return json.dumps(doc)


def apply(http: httpx.Client, url: str, body: str, manager: str | None, **params: str
          ) -> httpx.Response:
    query = {"fieldManager": manager, **params} if manager else dict(params)
    return http.patch(url, content=body, headers=APPLY, params=query)


def owners(obj: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
    return {(e["manager"], e["operation"], e.get("subresource", "")): e["fieldsV1"]
            for e in obj["metadata"].get("managedFields", [])}


def test_apply_needs_a_field_manager_and_force_is_for_apply_only(http: httpx.Client,
                                                                 url: str) -> None:
    """meta/v1/validation ValidatePatchOptions: fieldManager is required for an apply
    patch; ``force`` may not be given to any other patch."""
    r = apply(http, url, gadget({"port": 25}), None)
    assert r.status_code == 422
    assert r.json()["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                                   'Required value: is required for apply patch')
    r = http.patch(url, json={"spec": {"port": 1}}, headers=MERGE, params={"force": "true"})
    assert r.status_code == 422
    assert "force: Forbidden: may not be specified for non-apply patch" in r.json()["message"]


def test_create_by_apply_owns_what_it_applied(http: httpx.Client, url: str) -> None:
    """patch.go applyPatcher.createNewObject: an apply to a missing object creates it (201).
    The documented example: the applier owns exactly the fields it applied (no ``.`` on
    maps an apply set); status sent to the main resource is reset, never owned; defaults
    are not the applier's."""
    body = gadget({"port": 25, "options": {"a": "1"}}, status={"conditions": []})
    r = apply(http, url, body, "deployer")
    assert r.status_code == 201, r.text
    obj = r.json()
    assert obj["spec"] == {"port": 25, "options": {"a": "1"}, "mode": "a"}
    assert "status" not in obj
    assert obj["metadata"]["managedFields"] == [{
        "manager": "deployer", "operation": "Apply", "apiVersion": f"{G}/{V}",
        "time": obj["metadata"]["managedFields"][0]["time"], "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:options": {"f:a": {}}, "f:port": {}}}}]


def test_conflict_is_409_with_the_real_message_unless_forced(http: httpx.Client,
                                                             url: str) -> None:
    """merge/update.go + managedfields/internal/conflict.go: changing a field another
    manager owns is a 409 Conflict, message "Apply failed with N conflict(s)", one
    FieldManagerConflict cause per field; the object is unchanged; ``force=true`` moves
    the ownership."""
    assert apply(http, url, gadget({"port": 25, "host": "a"}), "one").status_code == 201
    r = apply(http, url, gadget({"port": 587}), "two")
    assert r.status_code == 409
    body = r.json()
    assert (body["reason"], body["code"]) == ("Conflict", 409)
    assert body["message"] == 'Apply failed with 1 conflict: conflict with "one": .spec.port'
    assert body["details"]["causes"] == [{"reason": "FieldManagerConflict",
                                          "message": 'conflict with "one"',
                                          "field": ".spec.port"}]
    r = apply(http, url, gadget({"port": 587, "host": "b"}), "two")
    assert r.json()["message"] == ('Apply failed with 2 conflicts: conflicts with "one":\n'
                                   '- .spec.host\n- .spec.port')
    assert http.get(url).json()["spec"]["port"] == 25
    r = apply(http, url, gadget({"port": 587}), "two", force="true")
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["spec"]["port"] == 587
    assert owners(obj) == {("one", "Apply", ""): {"f:spec": {"f:host": {}}},
                           ("two", "Apply", ""): {"f:spec": {"f:port": {}}}}


def test_unchanged_value_is_shared_and_removal_waits_for_the_last_owner(
        http: httpx.Client, url: str) -> None:
    """merge/update.go prune: applying a value another manager owns, unchanged, shares
    it; a field is removed only when no manager owns it any more."""
    apply(http, url, gadget({"port": 25, "tags": ["a", "b"]}), "one")
    r = apply(http, url, gadget({"tags": ["b"]}), "two")
    assert r.status_code == 200
    r = apply(http, url, gadget({"port": 25}), "one")  # one stops applying tags
    assert r.json()["spec"]["tags"] == ["b"]  # "a" was one's alone; "b" is two's too
    r = apply(http, url, gadget({}), "two")
    assert "tags" not in r.json()["spec"]
    assert r.json()["spec"]["port"] == 25


def test_an_update_takes_ownership_without_conflict(http: httpx.Client, url: str) -> None:
    """Updates (PUT, non-apply PATCH) never conflict: the writer owns what it changed,
    taken from whoever owned it (merge/update.go Updater.Update); an applier then
    conflicts with that updater, named with its operation's apiVersion."""
    apply(http, url, gadget({"port": 25}), "one")
    r = http.patch(url, json={"spec": {"port": 2525}}, headers=MERGE,
                   params={"fieldManager": "patcher"})
    assert r.status_code == 200
    assert owners(r.json())[("patcher", "Update", "")] == {"f:spec": {"f:port": {}}}
    assert ("one", "Apply", "") not in owners(r.json())  # it owned nothing else
    r = apply(http, url, gadget({"port": 26}), "one")
    assert r.status_code == 409
    assert r.json()["message"] == (f'Apply failed with 1 conflict: conflict with "patcher" '
                                   f'using {G}/{V}: .spec.port')
    r = apply(http, url, gadget({}), "one")  # nothing to remove: patcher owns port
    assert r.json()["spec"]["port"] == 2525


def test_atomic_list_conflicts_and_is_replaced_as_a_whole(http: httpx.Client,
                                                          url: str) -> None:
    """CRD lists are atomic unless ``x-kubernetes-list-type`` says otherwise: owned and
    replaced as one field."""
    apply(http, url, gadget({"hosts": ["x", "y"]}), "one")
    r = apply(http, url, gadget({"hosts": ["z"]}), "two")
    assert r.json()["details"]["causes"][0]["field"] == ".spec.hosts"
    r = apply(http, url, gadget({"hosts": ["z"]}), "two", force="true")
    assert r.json()["spec"]["hosts"] == ["z"]
    assert owners(r.json())[("two", "Apply", "")] == {"f:spec": {"f:hosts": {}}}


def test_granular_maps_and_sets_merge_by_key_and_value(http: httpx.Client, url: str) -> None:
    """Maps are granular (each key its own field), ``set`` lists merge by value."""
    apply(http, url, gadget({"options": {"a": "1"}, "tags": ["a"]}, metadata={
        "name": "g", "labels": {"team": "one"}}), "one")
    r = apply(http, url, gadget({"options": {"b": "2"}, "tags": ["b"]}, metadata={
        "name": "g", "labels": {"app": "two"}}), "two")
    obj = r.json()
    assert obj["spec"]["options"] == {"a": "1", "b": "2"}
    assert obj["spec"]["tags"] == ["a", "b"]
    assert obj["metadata"]["labels"] == {"team": "one", "app": "two"}
    assert owners(obj)[("two", "Apply", "")] == {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {"f:options": {"f:b": {}}, "f:tags": {'v:"b"': {}}}}


def test_status_apply_merges_conditions_by_type(http: httpx.Client, url: str) -> None:
    """``status.conditions`` is a list-map keyed by ``type``: two controllers each own
    their condition through ``/status`` (entries marked ``subresource: status``); spec
    and metadata sent to /status are reset, never owned."""
    apply(http, url, gadget({"port": 25}), "deployer")
    status = url + "/status"

    def cond(manager: str, type_: str, value: str, **params: str) -> httpx.Response:
        body = gadget({"port": 1}, status={"conditions": [{"type": type_, "status": value}]})
        return apply(http, status, body, manager, **params)

    assert cond("ctrl-a", "Ready", "True").status_code == 200
    r = cond("ctrl-b", "Synced", "False")
    obj = r.json()
    assert obj["spec"]["port"] == 25
    assert obj["status"]["conditions"] == [{"type": "Ready", "status": "True"},
                                           {"type": "Synced", "status": "False"}]
    assert owners(obj)[("ctrl-b", "Apply", "status")] == {"f:status": {"f:conditions": {
        'k:{"type":"Synced"}': {".": {}, "f:status": {}, "f:type": {}}}}}
    r = cond("ctrl-b", "Ready", "False")
    assert r.status_code == 409
    assert r.json()["message"] == ('Apply failed with 1 conflict: conflict with "ctrl-a" with '
                                   'subresource "status": .status.conditions[type="Ready"]'
                                   '.status')
    r = cond("ctrl-a", "Ready", "False")
    assert r.json()["status"]["conditions"][0] == {"type": "Ready", "status": "False"}


def test_status_apply_needs_the_object(http: httpx.Client, url: str) -> None:
    """Only the main resource creates on apply (the status REST never allows create)."""
    r = apply(http, url + "/status", gadget(status={}), "ctrl")
    assert r.status_code == 404


@pytest.mark.parametrize(("body", "code", "message"), [
    (gadget({"startTls": True}), 500,
     "failed to create typed patch object ({ns}/g; ssa.example.dev/v1, Kind=Gadget): "
     ".spec.startTls: field not declared in schema"),
    (gadget({"port": "x"}), 500,
     "failed to create typed patch object ({ns}/g; ssa.example.dev/v1, Kind=Gadget): "
     ".spec.port: expected numeric (int or float), got string"),
    (json.dumps({"apiVersion": f"{G}/v2", "kind": "Gadget", "metadata": {"name": "g"}}), 400,
     "invalid object type: ssa.example.dev/v2, Kind=Gadget"),
    (gadget({}, metadata={"name": "g", "managedFields": []}), 400,
     "metadata.managedFields must be nil"),
    (gadget({}, metadata={"name": "other"}), 400,
     "the name of the object (other) does not match the name on the URL (g)"),
])
def test_apply_configuration_is_checked(http: httpx.Client, url: str, body: str, code: int,
                                        message: str) -> None:
    """structuredmerge.go / versioncheck.go / patch.go: the configuration is typed against
    the schema ("field not declared in schema" is a 500 upstream, kubernetes#122480), must
    be the served kind, and may not carry managedFields."""
    r = apply(http, url, body, "m")
    assert r.status_code == code
    assert r.json()["message"] == message.format(ns=url.split("/")[5])


def test_reapplying_the_same_configuration_is_not_a_write(http: httpx.Client,
                                                          url: str) -> None:
    """managedFieldsUpdater: an apply that changes nothing keeps the object, its
    resourceVersion and the manager's timestamp."""
    first = apply(http, url, gadget({"port": 25}), "one").json()
    again = apply(http, url, gadget({"port": 25}), "one").json()
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["managedFields"] == first["metadata"]["managedFields"]


def test_updates_are_tracked_per_manager_from_field_manager_or_user_agent(
        http: httpx.Client, url: str) -> None:
    """create.go managerOrUserAgent: without ``fieldManager`` an update is owned by the
    User-Agent up to its first "/"; the creator owns every field it set (``.`` marks maps
    it created)."""
    coll = url.rsplit("/", 1)[0]
    r = http.post(coll, content=gadget({"port": 25}),
                  headers={"Content-Type": "application/json",
                           "User-Agent": "my-controller/1.2 (linux)"})
    assert r.status_code == 201
    assert owners(r.json()) == {("my-controller", "Update", ""): {
        "f:spec": {".": {}, "f:mode": {}, "f:port": {}}}}
    entry = r.json()["metadata"]["managedFields"][0]
    assert entry["apiVersion"] == f"{G}/{V}" and entry["time"].endswith("Z")


def test_at_most_ten_update_managers(http: httpx.Client, url: str) -> None:
    """capmanagers.go: beyond 10 update managers the oldest merge into
    ``ancient-changes``."""
    apply(http, url, gadget({}), "base")
    for i in range(12):
        r = http.patch(url, json={"spec": {"options": {f"k{i}": "v"}}}, headers=MERGE,
                       params={"fieldManager": f"writer-{i:02d}"})
        assert r.status_code == 200
    updaters = [m for (m, op, _s) in owners(r.json()) if op == "Update"]
    assert len(updaters) == 10
    assert "ancient-changes" in updaters and "writer-11" in updaters


def test_reset_managed_fields_then_before_first_apply(http: httpx.Client, url: str) -> None:
    """fieldmanager.go isResetManagedFields + skipnonapplied.go: ``managedFields: [{}]``
    clears ownership; the next apply first records the existing fields as
    ``before-first-apply``, which an apply then conflicts with."""
    apply(http, url, gadget({"port": 25}), "one")
    r = http.patch(url, json={"metadata": {"managedFields": [{}]}}, headers=MERGE)
    assert "managedFields" not in r.json()["metadata"]
    r = apply(http, url, gadget({"port": 26}), "two")
    assert r.status_code == 409
    assert 'conflict with "before-first-apply" using' in r.json()["message"]


def test_client_side_to_server_side_apply_hand_over(http: httpx.Client, url: str) -> None:
    """lastappliedmanager.go / lastappliedupdater.go: for the manager "kubectl", conflicts
    on fields whose live value is what ``kubectl.kubernetes.io/last-applied-configuration``
    says are allowed; the annotation follows the server-side configuration."""
    last = {"apiVersion": f"{G}/{V}", "kind": "Gadget",
            "metadata": {"name": "g", "namespace": url.split("/")[5]}, "spec": {"port": 25}}
    coll = url.rsplit("/", 1)[0]
    meta = {"name": "g", "annotations": {kube_ssa.LAST_APPLIED: json.dumps(last) + "\n"}}
    r = http.post(coll, content=gadget({"port": 25, "host": "h"}, metadata=meta),
                  params={"fieldManager": "kubectl-client-side-apply"},
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 201
    r = apply(http, url, gadget({"port": 587}), "kubectl")
    assert r.status_code == 200, r.text
    annotation = json.loads(r.json()["metadata"]["annotations"][kube_ssa.LAST_APPLIED])
    assert annotation["spec"] == {"port": 587}
    r = apply(http, url, gadget({"port": 587, "host": "other"}), "kubectl")
    assert r.status_code == 409  # host was not in the client-side configuration
    assert r.json()["message"].endswith(": .spec.host")


def test_dry_run_persists_nothing(http: httpx.Client, url: str) -> None:
    """``dryRun=All`` runs the whole write (validation, apply, conflicts) and stores
    nothing."""
    r = apply(http, url, gadget({"port": 25}), "one", dryRun="All")
    assert r.status_code == 201
    assert http.get(url).status_code == 404
    apply(http, url, gadget({"port": 25}), "one")
    r = apply(http, url, gadget({"port": 26}), "one", dryRun="All")
    assert r.json()["spec"]["port"] == 26
    assert http.get(url).json()["spec"]["port"] == 25
    r = apply(http, url, gadget({"port": 26}), "one", dryRun="Everything")
    assert r.status_code == 422


def test_field_validation_warn_is_the_default_and_sends_warnings(http: httpx.Client,
                                                                 url: str) -> None:
    """rest.go fieldValidation: without the parameter the server warns (``Warn``): each
    unknown field is a ``299`` Warning header and is pruned; ``Ignore`` prunes silently;
    ``Strict`` refuses."""
    coll = url.rsplit("/", 1)[0]
    body = gadget({"port": 25, "startTls": True})
    r = http.post(coll, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201
    assert r.headers["Warning"] == '299 - "unknown field \\"spec.startTls\\""'
    assert "startTls" not in r.json()["spec"]
    r = http.patch(url, json={"spec": {"typo": 1}}, headers=MERGE,
                   params={"fieldValidation": "Ignore"})
    assert r.status_code == 200 and "Warning" not in r.headers
    r = http.patch(url, json={"spec": {"typo": 1}}, headers=MERGE,
                   params={"fieldValidation": "Strict"})
    assert r.status_code == 400
    assert 'strict decoding error: unknown field "spec.typo"' in r.json()["message"]
