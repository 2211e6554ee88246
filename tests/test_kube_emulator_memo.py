"""The emulator's shortcuts give the answers of the long way.

The emulator memoises each top-level property's OpenAPI errors and CEL causes per CRD
schema (tests/support/kube_schema.py), builds a write's new object from a shallow copy of
the stored one, and encodes each watch event once for every watcher
(tests/support/kube_emulator.py).  Each shortcut is checked here against the long way:
the same causes for the same objects (valid and invalid, in any order, cold and warm),
nothing stale (an old value behind a transition rule, a value JSON would confuse with
another, a CRD whose schema changed), nothing shared that a later write changes in place,
and every watcher the event type its own selector calls for.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from typing import Any

import httpx

from tests.support import kube_ssa
from tests.support.kube_emulator import KubeEmulator, running_emulator
from tests.support.kube_schema import StructuralSchema

Obj = dict[str, Any]

SCHEMA: Obj = {
    "type": "object",
    "required": ["spec"],
    # a root rule sees the whole body (spec and status together)
    "x-kubernetes-validations": [
        {"rule": "!has(self.status) || !has(self.status.phase) || self.status.phase != 'Big'"
                 " || self.spec.size > 5", "message": "Big needs size > 5"}],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "x-kubernetes-validations": [
                {"rule": "self.mode == 'a' || self.size > 5", "message": "mode b needs size > 5"}],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "owner": {"type": "string", "x-kubernetes-validations": [
                    {"rule": "self == oldSelf", "message": "owner is immutable"}]},
                "ratio": {"type": "number", "x-kubernetes-validations": [
                    {"rule": "self < 2.5", "message": "ratio below 2.5"}]},
                "when": {"type": "string", "format": "date-time", "x-kubernetes-validations": [
                    {"rule": "self > timestamp('2020-01-01T00:00:00Z')",
                     "message": "after 2020"}]},
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True, "maxLength": 5},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string",
                                                                    "pattern": "^[a-z]+$"}},
            },
        },
        "status": {
            "type": "object",
            "properties": {
                "phase": {"type": "string"},
                "conditions": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["type"],
                    "maxItems": 8,
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "x-kubernetes-validations": [
                            {"rule": "self.type != 'Locked' || self.status == oldSelf.status",
                             "message": "Locked may not change"}],
                        "properties": {"type": {"type": "string", "maxLength": 32},
                                       "status": {"type": "string",
                                                  "enum": ["True", "False", "Unknown"]}},
                    },
                },
            },
        },
    },
}

SPECS: list[Any] = [
    {"size": 3}, {"size": 3, "mode": "a"}, {"size": 3, "mode": "b"}, {"size": 7, "mode": "b"},
    {"size": True}, {"size": 3.0}, {"size": "3"}, {"size": 0}, {"size": 11}, {},
    {"size": 3, "owner": "x"}, {"size": 3, "owner": "y"}, {"size": 3, "ratio": 2},
    {"size": 3, "ratio": 2.4}, {"size": 3, "ratio": 3}, {"size": 3, "ratio": "2"},
    {"size": 3, "when": "2021-05-01T00:00:00Z"}, {"size": 3, "when": "2019-05-01T00:00:00Z"},
    {"size": 3, "port": 25}, {"size": 3, "port": "smtp"}, {"size": 3, "port": 2.5},
    {"size": 3, "note": None}, {"size": 3, "note": "short"}, {"size": 3, "note": "longer"},
    {"size": 3, "tags": ["a", "b"]}, {"size": 3, "tags": ["a", "b", "c"]},
    {"size": 3, "tags": ["A"]}, {"size": 3, "tags": ["ok\n"]}, {"mode": "c", "size": 99},
    "not an object", None, [], {"size": 3, "unknown": 1},
]
STATUSES: list[Any] = [
    None, {}, {"phase": "Big"}, {"phase": "Small"}, {"phase": 3},
    {"conditions": [{"type": "Ready", "status": "True"}]},
    {"conditions": [{"type": "Ready", "status": "Maybe"}]},
    {"conditions": [{"status": "True"}]},
    {"conditions": [{"type": "Locked", "status": "True"}]},
    {"conditions": [{"type": "Locked", "status": "False"}]},
    {"conditions": "none"},
]


def _obj(spec: Any, status: Any) -> Obj:
    obj: Obj = {"apiVersion": "t.example.dev/v1", "kind": "Widget",
                "metadata": {"name": "w", "namespace": "ns"}}
    if spec is not ...:
        obj["spec"] = spec
    if status is not None:
        obj["status"] = status
    return obj


def _cases() -> list[tuple[Obj, Obj | None]]:
    objs = [_obj(sp, st) for sp, st in itertools.product(SPECS, STATUSES)]
    objs.append(_obj(..., None))  # no spec at all: the root's `required`
    olds: list[Obj | None] = [None, _obj({"size": 3, "owner": "x"}, None),
                              _obj({"size": 3, "owner": "y"},
                                   {"conditions": [{"type": "Locked", "status": "True"}]})]
    return [(o, old) for o in objs for old in olds]


def test_memoised_validation_answers_as_the_long_way() -> None:
    """Every (object, old object) pair: the causes of the memoised schema, cold and warm and
    in a shuffled order, are those of one whole-document validation without a memo."""
    plain = StructuralSchema(SCHEMA, memo_size=0)
    memo = StructuralSchema(SCHEMA)
    cases = _cases()
    expected = [plain.validate(copy.deepcopy(o), old) for o, old in cases]
    assert any(expected) and not all(expected)  # both answers occur
    assert any(c["message"].endswith("Big needs size > 5") for e in expected for c in e)
    assert any("owner is immutable" in c["message"] for e in expected for c in e)
    assert any("Locked may not change" in c["message"] for e in expected for c in e)
    assert [memo.validate(o, old) for o, old in cases] == expected  # cold
    assert [memo.validate(o, old) for o, old in cases] == expected  # warm
    order = list(range(len(cases)))
    random.Random(15).shuffle(order)
    for i in order:
        assert memo.validate(*cases[i]) == expected[i], cases[i]
    assert memo.openapi_memo.hits > 0 and memo.cel_memo.hits > 0
    assert plain.openapi_memo.hits == plain.cel_memo.hits == 0


def test_memo_does_not_answer_for_another_value_or_another_old_value() -> None:
    schema = StructuralSchema(SCHEMA)
    a3 = {"size": 3, "mode": "a"}
    # the same spec, now with a status that breaks a rule: refused
    assert schema.validate(_obj(a3, {"phase": "Small"})) == []
    assert schema.validate(_obj(a3, {"phase": "Big"}))
    # values JSON would confuse with each other are not the same value
    assert schema.validate(_obj({**a3, "size": 1}, None)) == []
    assert [c["field"] for c in schema.validate(_obj({**a3, "size": True}, None))] == [
        "spec.size"]
    assert schema.validate(_obj({**a3, "port": 25}, None)) == []
    assert schema.validate(_obj({**a3, "port": "25"}, None)) == []
    assert schema.validate(_obj({**a3, "port": 25.0}, None))
    # a transition rule: the old value is part of the answer
    new = _obj({**a3, "owner": "x"}, None)
    assert schema.validate(new, _obj({**a3, "owner": "x"}, None)) == []
    assert [c["message"] for c in schema.validate(new, _obj({**a3, "owner": "y"}, None))] == [
        'spec.owner: Invalid value: "string": owner is immutable']
    assert schema.validate(new, None) == []  # no old value: transition rules do not run
    locked = {"conditions": [{"type": "Locked", "status": "False"}]}
    was = {"conditions": [{"type": "Locked", "status": "True"}]}
    assert schema.validate(_obj(a3, locked), _obj(a3, locked)) == []
    assert schema.validate(_obj(a3, locked), _obj(a3, was))


def test_memo_is_bounded_and_still_right() -> None:
    plain = StructuralSchema(SCHEMA, memo_size=0)
    small = StructuralSchema(SCHEMA, memo_size=3)
    for rnd in range(3):
        for size in range(-2, 14):
            obj = _obj({"size": size, "mode": "b"}, {"phase": "Big"})
            assert small.validate(obj) == plain.validate(obj), (rnd, size)
            assert len(small.openapi_memo) <= 3 and len(small.cel_memo) <= 3


CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.t.example.dev"},
    "spec": {"group": "t.example.dev", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": SCHEMA}}]},
}
WIDGETS = "/apis/t.example.dev/v1/namespaces/ns/widgets"


async def test_a_changed_crd_schema_is_not_answered_from_the_old_schemas_memo() -> None:
    """A spec the first schema admitted (and memoised) is refused once the CRD says so."""
    async with running_emulator(namespaces=("ns",)) as (emu, url), \
            httpx.AsyncClient(base_url=url, timeout=30, **emu.http_kwargs()) as http:
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        r = await http.post(crds, json=CRD)
        assert r.status_code == 201, r.text
        body = {"apiVersion": "t.example.dev/v1", "kind": "Widget",
                "metadata": {"name": "w1"}, "spec": {"size": 8}}
        assert (await http.post(WIDGETS, json=body)).status_code == 201
        # The CRD again, with a lower maximum (deleted and created: its objects go with it)
        assert (await http.delete(f"{crds}/widgets.t.example.dev")).status_code == 200
        assert (await http.get(f"{crds}/widgets.t.example.dev")).status_code == 404
        tighter = copy.deepcopy(CRD)
        tighter["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "properties"]["size"]["maximum"] = 5
        r = await http.post(crds, json=tighter)
        assert r.status_code == 201, r.text
        r = await http.post(WIDGETS, json={**body, "metadata": {"name": "w2"}})
        assert r.status_code == 422, r.text
        assert [c["field"] for c in r.json()["details"]["causes"]] == ["spec.size"]


def _snapshot(emu: KubeEmulator, held: list[tuple[Obj, Obj]]) -> None:
    """Hold every stored object with a deep copy of it as it is now."""
    for objects in emu._data.values():
        held += [(o, copy.deepcopy(o)) for o in objects.values()]


async def test_writes_never_change_a_stored_object_in_place() -> None:
    """A write starts from a shallow copy of the stored object: every object once stored
    (as a list, a watch replay or an old value sees it) must stay as it was."""
    async with running_emulator(namespaces=("ns",)) as (emu, url), \
            httpx.AsyncClient(base_url=url, timeout=30, **emu.http_kwargs()) as http:
        held: list[tuple[Obj, Obj]] = []
        assert (await http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                json=CRD)).status_code == 201
        w1 = f"{WIDGETS}/w1"
        merge = {"Content-Type": "application/merge-patch+json"}
        jsonp = {"Content-Type": "application/json-patch+json"}
        apply = {"Content-Type": "application/apply-patch+yaml"}
        sec = "/api/v1/namespaces/ns/secrets"
        steps: list[tuple[str, str, Any, dict[str, str] | None]] = [
            ("POST", WIDGETS, {"apiVersion": "t.example.dev/v1", "kind": "Widget",
                               "metadata": {"name": "w1", "labels": {"a": "1"},
                                            "annotations": {"n": "1"},
                                            "finalizers": ["t.example.dev/hold"]},
                               "spec": {"size": 3, "tags": ["a"]}}, None),
            ("PATCH", w1, {"metadata": {"labels": {"a": "2", "b": "1"},
                                        "annotations": {"n": None, "m": "2"}},
                           "spec": {"tags": ["a", "b"]}}, merge),
            ("PATCH", f"{w1}/status", {"status": {"phase": "Small", "conditions": [
                {"type": "Ready", "status": "True"}]}}, merge),
            ("PATCH", w1, [{"op": "add", "path": "/metadata/labels/c", "value": "3"},
                           {"op": "replace", "path": "/spec/size", "value": 4},
                           {"op": "replace", "path": "/spec/tags/1", "value": "c"}], jsonp),
            ("PATCH", f"{w1}/status", [{"op": "replace", "path": "/status/conditions/0/status",
                                        "value": "False"}], jsonp),
            ("PATCH", w1, {"apiVersion": "t.example.dev/v1", "kind": "Widget",
                           "metadata": {"name": "w1", "labels": {"d": "4"}},
                           "spec": {"size": 5, "mode": "a"}}, apply),
            ("DELETE", w1, None, None),
            ("PATCH", w1, {"metadata": {"finalizers": None}}, merge),
            ("POST", sec, {"metadata": {"name": "s", "labels": {"a": "1"}},
                           "stringData": {"k": "v"}}, None),
            ("PATCH", f"{sec}/s", {"metadata": {"labels": {"a": None}},
                                   "stringData": {"k2": "v2"}}, merge),
            ("PATCH", f"{sec}/s", {"metadata": {"labels": {"e": "5"}}},
             {"Content-Type": "application/strategic-merge-patch+json"}),
        ]
        for method, path, body, headers in steps:
            _snapshot(emu, held)
            if method == "PATCH":
                params = {"fieldManager": "applier", "force": "true"} if headers == apply \
                    else {"fieldManager": "t"}
                r = await http.patch(path, content=json.dumps(body), headers=headers or {},
                                     params=params)
            elif method == "PUT" or method == "POST":
                r = await http.request(method, path, json=body)
            else:
                r = await http.delete(path)
            assert r.status_code < 300, (method, path, r.text)
            for obj, was in held:
                assert obj == was, (method, path)
        # PUT of the whole object and of /status, from what the server answered
        _snapshot(emu, held)
        secret = (await http.get(f"{sec}/s")).json()
        secret["metadata"]["labels"] = {"f": "6"}
        assert (await http.put(f"{sec}/s", json=secret)).status_code == 200
        for obj, was in held:
            assert obj == was
        assert len(held) > 20


async def test_each_watcher_gets_the_event_type_its_selector_calls_for() -> None:
    """One event, encoded once per type: a watcher whose selector the object starts
    matching gets ADDED, one without a selector MODIFIED, the same event; several events
    written before the watchers read arrive in order, one JSON document a line."""
    async with running_emulator(namespaces=("ns",)) as (emu, url), \
            httpx.AsyncClient(base_url=url, timeout=30, **emu.http_kwargs()) as http:
        sec = "/api/v1/namespaces/ns/secrets"
        r = await http.post(sec, json={"metadata": {"name": "s", "labels": {"t": "b"}}})
        assert r.status_code == 201
        rv = r.json()["metadata"]["resourceVersion"]
        merge = {"Content-Type": "application/merge-patch+json"}
        for tier in ("a", "b", "a"):
            r = await http.patch(f"{sec}/s", headers=merge,
                                 content=json.dumps({"metadata": {"labels": {"t": tier}}}))
            assert r.status_code == 200
        assert (await http.delete(f"{sec}/s")).status_code == 200

        async def watch(**params: str) -> list[tuple[str, str]]:
            async with http.stream("GET", sec, params={"watch": "1", "resourceVersion": rv,
                                                       "timeoutSeconds": "1", **params}) as r:
                lines = [json.loads(line) async for line in r.aiter_lines() if line]
            return [(e["type"], e["object"]["metadata"]["labels"]["t"]) for e in lines]

        for _ in range(2):  # the second time from the encoded lines of the first
            assert await watch(labelSelector="t=a") == [
                ("ADDED", "a"), ("DELETED", "b"), ("ADDED", "a"), ("DELETED", "a")]
            assert await watch() == [
                ("MODIFIED", "a"), ("MODIFIED", "b"), ("MODIFIED", "a"), ("DELETED", "a")]
            assert await watch(labelSelector="t=b") == [
                ("DELETED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_recursive_difference_drops_what_the_long_way_drops() -> None:
    """``Set.RecursiveDifference`` by the lengths of the excluded paths only: the same
    result as testing every prefix of every path."""
    rng = random.Random(10)
    pes = [("f", "spec"), ("f", "status"), ("f", "metadata"), ("f", "a"), ("k", (("t", '"x"'),)),
           ("i", 0), ("v", '"y"')]

    def path(n: int) -> tuple[Any, ...]:
        return tuple(rng.choice(pes) for _ in range(n))

    for _ in range(300):
        paths = frozenset(path(rng.randint(0, 4)) for _ in range(rng.randint(0, 12)))
        exclude = frozenset(path(rng.choice([0, 1, 1, 1, 2, 3])) for _ in range(rng.randint(0, 3)))
        long_way = frozenset(p for p in paths if not any(
            p[:i] in exclude for i in range(1, len(p) + 1))) if exclude else paths
        assert kube_ssa.recursive_difference(paths, exclude) == long_way, (paths, exclude)


def test_compare_skips_only_parts_that_are_the_same(monkeypatch: Any) -> None:
    """The field manager's comparison skips an unchanged top-level part: the same removed /
    modified / added paths as walking every part, also where Python's ``==`` says
    ``True == 1`` (Go's ``value.Equals`` does not)."""
    t = kube_ssa.crd_type(SCHEMA)
    parts: list[Any] = [
        {"size": 1}, {"size": True}, {"size": 1.0}, {"size": 1, "mode": "a"},
        {"mode": "a", "size": 1}, {"tags": ["a", "b"]}, {"tags": ["a", True]},
        {"tags": ["a", 1]}, {"conditions": [{"type": "A", "status": "True"}]},
        {"conditions": [{"type": "A", "status": True}]}, {}, [], [1], [True], "x", None]
    pairs = [({"spec": a, "status": b}, {"spec": c, "status": b})
             for a, b, c in itertools.product(parts, parts[:6], parts)]
    shortcut = [kube_ssa.compare(lhs, rhs, t) for lhs, rhs in pairs]
    monkeypatch.setattr(kube_ssa, "_unchanged", lambda a, b: False)
    walked = [kube_ssa.compare(lhs, rhs, t) for lhs, rhs in pairs]
    assert shortcut == walked
    assert any(c.modified for c in walked) and any(not c.changed for c in walked)


ADMIT_SCHEMA: Obj = {
    "type": "object",
    "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "size": {"type": "integer", "default": 1},
            "mode": {"type": "string", "nullable": True, "default": "a"},
            "inner": {"type": "object", "default": {}, "properties": {
                "x": {"type": "integer", "default": 2}, "y": {"type": "string"}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"n": {"type": "integer", "default": 3}}},
            "map": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {"z": {"type": "integer", "default": 4}}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {
                "k": {"type": "string", "default": "d"}}}}}},
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        "extra": {"type": "object", "default": {"e": 1}, "properties": {
            "e": {"type": "integer"}}},
        "empty": {},
    },
}


def test_admission_answers_as_the_four_walks() -> None:
    """prune, drop nulls, default and the unknown fields, memoised per property: the same
    object (key order included) and the same unknown fields as the four walks, cold and
    warm, for objects with nulls, unknown fields, root defaults and odd top-level keys."""
    plain = StructuralSchema(ADMIT_SCHEMA, memo_size=0)
    memo = StructuralSchema(ADMIT_SCHEMA)
    specs: list[Any] = [
        {}, {"size": 5}, {"size": None, "mode": None}, {"mode": "b", "bogus": 1},
        {"inner": {"y": "q", "w": 1}}, {"inner": None}, {"free": {"n": None, "keep": [1]}},
        {"map": {"a": {}, "b": {"z": 9, "u": 1}}}, {"list": [{}, {"k": "x", "v": 1}, None]},
        None, "text", [1, None]]
    statuses: list[Any] = [..., None, {}, {"phase": "x", "u": 2}, {"phase": None}]
    tops: list[Obj] = [
        {"apiVersion": "t/v1", "kind": "W", "metadata": {"name": "w", "labels": None}},
        {"metadata": {"name": "w"}, "kind": "W"}, {"apiVersion": None, "kind": "W"},
        {"metadata": None}, {"extra": {"e": 2, "f": 3}}, {"extra": None}, {"unknown": 1},
        {"empty": {"a": 1}}, {"empty": None}]
    seen = 0
    for _round in range(2):
        for top, spec, status in itertools.product(tops, specs, statuses):
            obj: Obj = {**top, "spec": spec}
            if status is not ...:
                obj["status"] = status
            for shape in (obj, {k: obj[k] for k in reversed(list(obj))}):
                want = (plain.default(plain.drop_nulls(plain.prune(copy.deepcopy(shape)))),
                        plain.unknown_fields(shape))
                got = memo.admit(copy.deepcopy(shape))
                assert repr(got) == repr(want), shape
                assert repr(plain.admit(copy.deepcopy(shape))) == repr(want)
                seen += 1
    assert seen > 1000 and memo.admit_memo.hits > 0
