"""CRD admission as apiextensions-apiserver does it (tests/support/kube_crd.py).

Each test names the upstream rule it follows (paths relative to
kubernetes/apiextensions-apiserver unless said otherwise).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.kube_cel import CelError, compile_rule, decl_type
from tests.support.kube_crd import validate_crd


def crd(spec_schema: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.example.dev"},
        "spec": {
            "group": "test.example.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": spec_schema,
                                   "status": {"type": "object", **status}},
                }},
            }],
        },
    }


def messages(doc: dict[str, Any]) -> list[str]:
    return [c["message"] for c in validate_crd(doc)]


SPEC = "spec.versions[0].schema.openAPIV3Schema.properties[spec]"


def test_a_well_formed_crd_is_admitted() -> None:
    doc = crd({"type": "object", "properties": {"size": {"type": "integer"}},
               "x-kubernetes-validations": [{"rule": "self.size > 0", "message": "m"}]})
    assert validate_crd(doc) == []


def test_rule_on_preserve_unknown_only_field_is_undefined() -> None:
    """pkg/apiserver/schema/cel/validation_test.go: a field without a type (only
    x-kubernetes-preserve-unknown-fields) is invisible to CEL -> compilation failed,
    undefined field. This is exactly the OAuth2Provider scopes bug."""
    doc = crd({"type": "object",
               "properties": {"scopes": {"x-kubernetes-preserve-unknown-fields": True}},
               "x-kubernetes-validations": [{
                   "rule": "!has(self.scopes) || type(self.scopes) == list",
                   "message": "m"}]})
    (msg,) = messages(doc)
    assert msg.startswith(f"{SPEC}.x-kubernetes-validations[0].rule: Invalid value: ")
    assert "compilation failed: ERROR: <input>:1:" in msg
    assert "undefined field 'scopes'" in msg


def test_rule_on_missing_field_is_undefined() -> None:
    doc = crd({"type": "object", "properties": {"a": {"type": "string"}},
               "x-kubernetes-validations": [{"rule": "self.b == 'x'"}]})
    (msg,) = messages(doc)
    assert "undefined field 'b'" in msg


def test_rule_that_does_not_parse_is_refused() -> None:
    doc = crd({"type": "object", "properties": {"a": {"type": "string"}},
               "x-kubernetes-validations": [{"rule": "self.a ==", "message": "m"}]})
    (msg,) = messages(doc)
    assert "compilation failed: ERROR: <input>:1:" in msg and "Syntax error" in msg


def test_rule_type_errors_and_non_bool_results() -> None:
    """compilation.go: type-checked against declared types; must evaluate to a bool."""
    t = decl_type({"type": "object", "properties": {"n": {"type": "integer"},
                                                    "s": {"type": "string"}}})
    with pytest.raises(CelError, match="found no matching overload for '_\\+_'"):
        compile_rule(t, "self.n + self.s == 'x'")
    with pytest.raises(CelError, match="cel expression must evaluate to a bool"):
        compile_rule(t, "self.n + 1")
    assert compile_rule(t, "self.n + 1 > 0 && self.s.startsWith('a')").cost > 0


def test_escaped_property_names_follow_kubernetes_escaping() -> None:
    """apiserver/pkg/cel/escaping.go: '-' -> __dash__, '.' -> __dot__, keywords -> __kw__."""
    t = decl_type({"type": "object", "properties": {"x-y": {"type": "integer"},
                                                    "namespace": {"type": "string"}}})
    compile_rule(t, "self.x__dash__y > 0 && self.__namespace__ != ''")
    with pytest.raises(CelError):
        compile_rule(t, "self.namespace != ''")


@pytest.mark.parametrize(("node", "expected"), [
    ({"type": "strng"}, f'{SPEC}.properties[a].type: Unsupported value: "strng"'),
    ({"description": "no type"}, f"{SPEC}.properties[a].type: Required value: must not be "
                                 "empty for specified object fields"),
    ({"type": "array"}, f"{SPEC}.properties[a].items: Required value: must be specified"),
    ({"type": "array", "items": {"description": "x"}},
     f"{SPEC}.properties[a].items.type: Required value: must not be empty for specified array"),
    ({"type": "object", "properties": {"b": {"type": "string"}},
      "additionalProperties": {"type": "string"}},
     "additionalProperties and properties are mutual exclusive"),
    ({"$ref": "#/definitions/x"}, "$ref is not supported"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "must be a valid regular expression"),
    ({"type": "string", "pattern": "^(a)\\1$"}, "must be a valid regular expression"),
    ({"type": "integer", "default": "x", "minimum": 1}, f"{SPEC}.properties[a].default"),
    ({"type": "string", "enum": ["a"], "default": "b"}, f"{SPEC}.properties[a].default"),
    ({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
      "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
     "this property is in x-kubernetes-list-map-keys, so it must have a default or be a "
     "required property"),
])
def test_structural_schema_rules(node: dict[str, Any], expected: str) -> None:
    """pkg/apiserver/schema/validation.go (validateStructuralInvariants) and
    pkg/apis/apiextensions/validation/validation.go (types, patterns, defaults, list types)."""
    doc = crd({"type": "object", "properties": {"a": node}})
    assert any(expected in m for m in messages(doc)), messages(doc)


def test_re2_accepts_what_go_accepts() -> None:
    doc = crd({"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^[a-z]+(\\.[a-z]+)*$"}}})
    assert validate_crd(doc) == []


def test_metadata_may_only_restrict_name_and_generate_name() -> None:
    doc = crd({"type": "object"})
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"] = {"type": "object", "properties": {
        "labels": {"type": "object"}}}
    assert any("must not specify anything other than name and generateName" in m
               for m in messages(doc))
    schema["properties"]["metadata"] = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 10}}}
    assert validate_crd(doc) == []


def test_cost_limit_for_unbounded_lists_and_strings() -> None:
    """validation.go StaticEstimatedCostLimit (10,000,000): a rule iterating a list without
    maxItems over strings without maxLength is refused with the upstream message; bounding
    both makes it acceptable."""
    rule = [{"rule": "self.all(x, x.matches('^[a-z]+$'))", "message": "lowercase"}]
    unbounded = crd({"type": "object", "properties": {"names": {
        "type": "array", "items": {"type": "string"}, "x-kubernetes-validations": rule}}})
    found = messages(unbounded)
    msg = found[0]
    assert any("estimated rule cost total for entire OpenAPIv3 schema" in m for m in found)
    assert msg.startswith(f"{SPEC}.properties[names].x-kubernetes-validations[0].rule: "
                          "Forbidden: estimated rule cost exceeds budget by factor of ")
    assert "adding maxItems, maxProperties, and maxLength" in msg
    bounded = copy.deepcopy(unbounded)
    names = bounded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["names"]
    names["maxItems"] = 16
    names["items"]["maxLength"] = 64
    assert validate_crd(bounded) == []


def test_names_and_versions() -> None:
    """validation.go ValidateCustomResourceDefinition: name is plural.group, a dotted group,
    exactly one storage version."""
    doc = crd({"type": "object"})
    doc["metadata"]["name"] = "wrong.test.example.dev"
    doc["spec"]["versions"][0]["storage"] = False
    found = messages(doc)
    assert any('metadata.name: Invalid value: "wrong.test.example.dev": must be '
               'spec.names.plural+"."+spec.group' in m for m in found)
    assert any("must have exactly one version marked as storage version" in m for m in found)


def test_rule_messages_must_be_single_line() -> None:
    doc = crd({"type": "object", "properties": {"a": {"type": "string"}},
               "x-kubernetes-validations": [{"rule": "self.a != ''", "message": "two\nlines"}]})
    assert any("must not contain line breaks" in m for m in messages(doc))


def test_the_old_oauth2provider_crd_is_refused() -> None:
    """The OAuth2Provider CRD as shipped before scopes was typed: refused at install."""
    import yaml

    from reconciler.schema import crdgen
    from reconciler.schema.schemas import KIND_OAUTH2

    doc = yaml.safe_load(crdgen.crd_path(KIND_OAUTH2).read_text())
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["scopes"] = {"x-kubernetes-preserve-unknown-fields": True}
    spec["x-kubernetes-validations"].insert(0, {
        "rule": "!has(self.scopes) || type(self.scopes) == string || type(self.scopes) == list",
        "message": "scopes must be a list of strings or a space/comma separated string"})
    found = messages(doc)
    assert len(found) == 1 and "undefined field 'scopes'" in found[0]


# --- the same admission over HTTP, in the emulator ---------------------------------------


def test_emulator_refuses_a_bad_crd_with_422_and_establishes_a_good_one() -> None:
    """apiextensions-apiserver: an invalid CRD is 422 Invalid with causes; an accepted one
    gets NamesAccepted and Established conditions (kubectl wait --for=condition=Established)."""
    import httpx

    from tests.support.kube_emulator import EmulatorThread

    bad = crd({"type": "object", "properties": {"scopes": {
        "x-kubernetes-preserve-unknown-fields": True}},
        "x-kubernetes-validations": [{"rule": "has(self.scopes)"}]})
    good = crd({"type": "object", "properties": {"size": {"type": "integer"}}})
    with EmulatorThread(lenient=True) as kube:
        base = f"{kube.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        r = httpx.post(base, json=bad)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["reason"] == "Invalid"
        assert body["message"].startswith(
            'CustomResourceDefinition.apiextensions.k8s.io "widgets.test.example.dev" is '
            f"invalid: {SPEC}.x-kubernetes-validations[0].rule: Invalid value: ")
        assert "undefined field 'scopes'" in body["details"]["causes"][0]["message"]
        assert httpx.get(f"{kube.url}/apis/test.example.dev/v1/widgets").status_code == 404
        r = httpx.post(base, json=good)
        assert r.status_code == 201, r.text
        conditions = {c["type"]: c["status"] for c in r.json()["status"]["conditions"]}
        assert conditions == {"NamesAccepted": "True", "Established": "True"}


def test_deleting_a_crd_deletes_its_objects_honouring_finalizers() -> None:
    """apiextensions finalizer controller: the CRD stays Terminating (cleanup finalizer)
    until every custom resource is gone; a resource's own finalizer holds both."""
    import httpx

    from tests.support.kube_emulator import EmulatorThread

    good = crd({"type": "object", "properties": {"size": {"type": "integer"}}})
    with EmulatorThread(lenient=True) as kube:
        base = f"{kube.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        assert httpx.post(base, json=good).status_code == 201
        objs = f"{kube.url}/apis/test.example.dev/v1/namespaces/default/widgets"
        for name, finalizers in (("a", []), ("b", ["test/hold"])):
            r = httpx.post(objs, json={"apiVersion": "test.example.dev/v1", "kind": "Widget",
                                       "metadata": {"name": name, "finalizers": finalizers},
                                       "spec": {"size": 1}})
            assert r.status_code == 201, r.text
        r = httpx.delete(f"{base}/widgets.test.example.dev")
        assert r.status_code == 200
        crd_now = httpx.get(f"{base}/widgets.test.example.dev").json()
        assert crd_now["metadata"]["deletionTimestamp"]
        names = [o["metadata"]["name"] for o in httpx.get(objs).json()["items"]]
        assert names == ["b"]  # a is gone, b is held by its finalizer
        b = httpx.get(f"{objs}/b").json()
        assert b["metadata"]["deletionTimestamp"]
        r = httpx.patch(f"{objs}/b", json={"metadata": {"finalizers": None}},
                        headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{base}/widgets.test.example.dev").status_code == 404
        assert httpx.get(objs).status_code == 404  # the kind is no longer served


def test_a_crd_keeps_its_cleanup_finalizer_through_updates() -> None:
    """apiextensions-apiserver validates a CRD's metadata with apimachinery's generic
    ValidateObjectMeta (no "fully qualified" finalizer rule): updating a CRD that carries its
    own ``customresourcecleanup.apiextensions.k8s.io`` finalizer (``kubectl apply`` of a
    changed CRD) succeeds. Custom resources get a warning, not an error, for a finalizer
    without a ``/`` (pkg/registry/customresource/validator.go); built-in kinds still refuse
    it (tests/test_kube_emulator_validation.py). Both were 422 before."""
    import httpx

    from tests.support.kube_emulator import CRD_CLEANUP, EmulatorThread

    good = crd({"type": "object", "properties": {"size": {"type": "integer"}}})
    with EmulatorThread(lenient=True) as kube:
        base = f"{kube.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        assert httpx.post(base, json=good).status_code == 201
        live = httpx.get(f"{base}/widgets.test.example.dev").json()
        assert CRD_CLEANUP in live["metadata"]["finalizers"]
        changed = copy.deepcopy(live)
        props = changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        props["spec"]["properties"]["colour"] = {"type": "string"}
        r = httpx.put(f"{base}/widgets.test.example.dev", json=changed)
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["finalizers"] == live["metadata"]["finalizers"]
        r = httpx.patch(f"{base}/widgets.test.example.dev",
                        json={"metadata": {"labels": {"app": "smtpctl"}}},
                        headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
        objs = f"{kube.url}/apis/test.example.dev/v1/namespaces/default/widgets"
        r = httpx.post(objs, json={"apiVersion": "test.example.dev/v1", "kind": "Widget",
                                   "metadata": {"name": "w", "finalizers": ["hold"]},
                                   "spec": {"size": 1, "colour": "red"}})
        assert r.status_code == 201, r.text
        assert r.json()["spec"]["colour"] == "red"  # the updated schema is in force
        assert ('metadata.finalizers[0]: \\"hold\\": prefer a domain-qualified finalizer name'
                in r.headers["Warning"])
        r = httpx.patch(f"{objs}/w", json={"metadata": {"labels": {"a": "b"}}},
                        headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200 and "Warning" not in r.headers  # not a new finalizer
        r = httpx.post(objs, json={"apiVersion": "test.example.dev/v1", "kind": "Widget",
                                   "metadata": {"name": "bad", "finalizers": ["a b"]},
                                   "spec": {"size": 1}})
        assert r.status_code == 422  # still a qualified name
