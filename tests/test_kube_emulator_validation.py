"""Object validation in the strict emulator, rule by rule (tests/support/kube_validation.py).

Each test names the upstream rule: ``k8s.io/apimachinery/pkg/util/validation``
(``IsDNS1123Subdomain``, ``IsDNS1123Label``, ``IsDNS1035Label``, ``IsQualifiedName``,
``IsValidLabelValue``), ``k8s.io/apimachinery/pkg/api/validation/objectmeta.go``
(``ValidateObjectMetaAccessor``), ``k8s.io/apiserver/pkg/storage/names`` (generateName),
``k8s.io/kubernetes/pkg/apis/core/validation`` (``ValidateSecret``, ``ValidateConfigMap``,
``legacyValidateEvent``, ``ValidateNamespaceName``, ``ValidateServiceName``), and Go's JSON
decoding of the built-in types (``metav1.MicroTime``, ``[]byte`` as base64).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import kube_validation
from tests.support.kube_emulator import EmulatorThread

SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                 "characters, '-' or '.', and must start and end with an alphanumeric "
                 "character (e.g. 'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with EmulatorThread(namespaces=("mail",)) as kube:
        assert kube.emu is not None
        with httpx.Client(base_url=kube.url, timeout=10, **kube.emu.http_kwargs()) as client:
            yield client


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(path, json=body)


def cm(name: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}}


def test_names_are_dns_subdomains_for_most_kinds(http: httpx.Client) -> None:
    """ValidateObjectMetaAccessor + NameIsDNSSubdomain: 422 with the upstream message;
    at most 253 characters."""
    r = post(http, "/api/v1/namespaces/mail/configmaps", cm("Bad_Name"))
    assert r.status_code == 422
    body = r.json()
    assert body["message"] == (f'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid '
                               f'value: "Bad_Name": {SUBDOMAIN_MSG}')
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    r = post(http, "/api/v1/namespaces/mail/configmaps", cm("a" * 254))
    assert "must be no more than 253 characters" in r.json()["message"]
    assert post(http, "/api/v1/namespaces/mail/configmaps", cm("a.b-c")).status_code == 201


@pytest.mark.parametrize(("path", "kind", "name", "message"), [
    ("/api/v1/namespaces", "Namespace", "has.dots", "must not contain dots"),
    ("/api/v1/namespaces", "Namespace", "a" * 64, "must be no more than 63 characters"),
    ("/api/v1/namespaces/mail/services", "Service", "1svc",
     "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
     "with an alphabetic character"),
    ("/apis/rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", "a/b",
     "may not contain '/'"),
])
def test_each_kind_has_its_name_rule(http: httpx.Client, path: str, kind: str, name: str,
                                     message: str) -> None:
    """ValidateNamespaceName (DNS-1123 label), ValidateServiceName (DNS-1035 label),
    ValidateRBACName (path segment)."""
    group = "rbac.authorization.k8s.io/v1" if "rbac" in path else "v1"
    r = post(http, path, {"apiVersion": group, "kind": kind, "metadata": {"name": name}})
    assert r.status_code == 422
    assert message in r.json()["message"]


def test_rbac_names_may_contain_colons(http: httpx.Client) -> None:
    body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:smtpctl:reader"}, "rules": []}
    assert post(http, "/apis/rbac.authorization.k8s.io/v1/clusterroles", body
                ).status_code == 201


def test_generate_name(http: httpx.Client) -> None:
    """names.SimpleNameGenerator: the prefix (at most 58 characters) plus 5 characters of
    "bcdfghjklmnpqrstvwxz2456789"; the prefix is validated with its trailing dash
    masked."""
    r = post(http, "/api/v1/namespaces/mail/configmaps",
             {"metadata": {"generateName": "cfg-"}})
    assert r.status_code == 201
    name = r.json()["metadata"]["name"]
    assert name.startswith("cfg-") and len(name) == 9
    assert set(name[4:]) <= set("bcdfghjklmnpqrstvwxz2456789")
    r = post(http, "/api/v1/namespaces/mail/configmaps",
             {"metadata": {"generateName": "x" * 80}})
    assert len(r.json()["metadata"]["name"]) == 63
    r = post(http, "/api/v1/namespaces/mail/configmaps",
             {"metadata": {"generateName": "Bad_"}})
    assert r.status_code == 422
    assert 'metadata.generateName: Invalid value: "Bad_"' in r.json()["message"]


def test_labels_annotations_and_finalizers(http: httpx.Client) -> None:
    """ValidateLabels (qualified keys, values of at most 63 characters), ValidateAnnotations
    (256 KiB), ValidateFinalizers (qualified, and fully qualified unless standard)."""
    r = post(http, "/api/v1/namespaces/mail/configmaps", cm("l1", labels={"bad key": "v"}))
    assert 'metadata.labels: Invalid value: "bad key": name part must consist of' \
        in r.json()["message"]
    r = post(http, "/api/v1/namespaces/mail/configmaps", cm("l2", labels={"k": "v" * 64}))
    assert "must be no more than 63 characters" in r.json()["message"]
    r = post(http, "/api/v1/namespaces/mail/configmaps",
             cm("l3", annotations={"a": "x" * (256 * 1024)}))
    assert "metadata.annotations: Too long: may not be more than 262144 bytes" \
        in r.json()["message"]
    r = post(http, "/api/v1/namespaces/mail/configmaps", cm("l4", finalizers=["mine"]))
    assert ('metadata.finalizers: Invalid value: "mine": name is neither a standard finalizer '
            'name nor is it fully qualified') in r.json()["message"]
    r = post(http, "/api/v1/namespaces/mail/configmaps",
             cm("l5", finalizers=["example.com/mine"]))
    assert r.status_code == 201
    r = http.patch("/api/v1/namespaces/mail/configmaps/l5",
                   json={"metadata": {"labels": {"-x": "1"}}},
                   headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 422  # updates are validated too


def test_cluster_scoped_objects_lose_a_namespace(http: httpx.Client) -> None:
    """EnsureObjectNamespaceMatchesRequestNamespace: cluster-scoped objects have none."""
    body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "ns-cleared", "namespace": "mail"}, "rules": []}
    r = post(http, "/apis/rbac.authorization.k8s.io/v1/clusterroles", body)
    assert r.status_code == 201 and "namespace" not in r.json()["metadata"]


def test_secret_data_must_be_base64(http: httpx.Client) -> None:
    """Secret.data is []byte: Go's decoder refuses bad base64 with 400 (before: stored)."""
    body = {"metadata": {"name": "b64"}, "data": {"password": "%%%not-base64%%%"}}
    r = post(http, "/api/v1/namespaces/mail/secrets", body)
    assert r.status_code == 400
    assert r.json()["message"] == ('Secret in version "v1" cannot be handled as a Secret: '
                                   'illegal base64 data at input byte 0')
    assert "not-base64" not in r.text  # secret values are never echoed


def test_secret_keys_size_type_and_immutability(http: httpx.Client) -> None:
    """ValidateSecret / ValidateSecretUpdate: config keys, 1 MiB, type and immutable."""
    r = post(http, "/api/v1/namespaces/mail/secrets",
             {"metadata": {"name": "k"}, "stringData": {"bad key": "v"}})
    assert r.status_code == 422 and "a valid config key must consist of" in r.json()["message"]
    big = base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()
    r = post(http, "/api/v1/namespaces/mail/secrets", {"metadata": {"name": "big"},
                                                       "data": {"k": big}})
    assert r.status_code == 422 and "data: Too long" in r.json()["message"]
    r = post(http, "/api/v1/namespaces/mail/secrets",
             {"metadata": {"name": "frozen"}, "stringData": {"k": "v"}, "immutable": True})
    assert r.status_code == 201
    merge = {"Content-Type": "application/merge-patch+json"}
    r = http.patch("/api/v1/namespaces/mail/secrets/frozen", json={"stringData": {"k": "w"}},
                   headers=merge)
    assert r.status_code == 422
    assert "data: Forbidden: field is immutable when `immutable` is set" in r.json()["message"]
    r = http.patch("/api/v1/namespaces/mail/secrets/frozen",
                   json={"type": "kubernetes.io/basic-auth"}, headers=merge)
    assert r.status_code == 422 and 'type: Invalid value: "kubernetes.io/basic-auth": field ' \
        'is immutable' in r.json()["message"]


def test_lease_times_are_micro_times_and_fields_typed(http: httpx.Client) -> None:
    """coordination/v1 LeaseSpec: renewTime is a MicroTime (exactly six fractional digits),
    leaseDurationSeconds an int32."""
    path = "/apis/coordination.k8s.io/v1/namespaces/mail/leases"

    def lease(name: str, **spec: Any) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"holderIdentity": "a", **spec}}

    r = post(http, path, lease("l1", renewTime="2024-01-01T00:00:00Z"))
    assert r.status_code == 400
    assert r.json()["message"].startswith('Lease in version "v1" cannot be handled as a '
                                          'Lease: parsing time "2024-01-01T00:00:00Z"')
    r = post(http, path, lease("l2", leaseDurationSeconds="15"))
    assert r.status_code == 400 and "of type int32" in r.json()["message"]
    r = post(http, path, lease("l3", renewTime="2024-01-01T00:00:00.000000Z",
                               leaseDurationSeconds=15))
    assert r.status_code == 201


def test_unknown_fields_of_built_in_kinds(http: httpx.Client) -> None:
    """The API server decodes built-in kinds into Go structs: a field the type does not
    have is a strict decoding error with ``fieldValidation=Strict`` (kubectl's default),
    a ``299`` Warning with Warn (the server's default), silence with Ignore, and it is
    never stored.  Before: a Secret's ``stringdata`` typo was accepted and kept."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "typo"},
              "stringdata": {"password": "x"}}
    path = "/api/v1/namespaces/mail/secrets"
    r = http.post(path, json=secret, params={"fieldValidation": "Strict"})
    assert r.status_code == 400
    assert r.json()["message"] == ('Secret in version "v1" cannot be handled as a Secret: '
                                   'strict decoding error: unknown field "stringdata"')
    r = http.post(path, json=secret)
    assert r.status_code == 201
    assert r.headers["Warning"] == '299 - "unknown field \\"stringdata\\""'
    assert "stringdata" not in http.get(f"{path}/typo").json()
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "l", "labels": {"a": "b"}, "selfLink": ""},
             "spec": {"holderIdentty": "me", "leaseDurationSeconds": 15}}
    r = http.post("/apis/coordination.k8s.io/v1/namespaces/mail/leases", json=lease,
                  params={"fieldValidation": "Strict"})
    assert r.status_code == 400 and r.json()["message"].endswith(
        'strict decoding error: unknown field "spec.holderIdentty"')
    r = http.post("/apis/coordination.k8s.io/v1/namespaces/mail/leases", json=lease,
                  params={"fieldValidation": "Ignore"})
    assert r.status_code == 201 and "Warning" not in r.headers
    assert r.json()["spec"] == {"leaseDurationSeconds": 15}
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
             "involvedObject": {"kind": "Secret", "name": "typo", "namespace": "mail"},
             "reason": "R", "message": "m", "type": "Normal", "source": {"component": "c"},
             "firstTimestamp": "2026-01-01T00:00:00Z", "count": 1,
             "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:00.000000Z"},
             "reportingComponent": "c", "extra": {"deep": 1}}
    r = http.post("/api/v1/namespaces/mail/events", json=event,
                  params={"fieldValidation": "Strict"})
    assert r.status_code == 400 and r.json()["message"].endswith('unknown field "extra"')


def test_core_events_keep_their_legacy_rules(http: httpx.Client) -> None:
    """legacyValidateEvent: core/v1 Event names are not validated, but the involved
    object's namespace must be the Event's."""
    event: dict[str, Any] = {
        "metadata": {"name": "Any_Name.123"}, "reason": "R", "message": "m",
        "involvedObject": {"kind": "ExternalSmtp", "name": "x", "namespace": "mail"},
        "firstTimestamp": "2024-01-01T00:00:00Z", "type": "Normal"}
    assert post(http, "/api/v1/namespaces/mail/events", event).status_code == 201
    event["metadata"]["name"] = "other"
    event["involvedObject"]["namespace"] = "elsewhere"
    r = post(http, "/api/v1/namespaces/mail/events", event)
    assert r.status_code == 422
    assert ('involvedObject.namespace: Invalid value: "elsewhere": does not match '
            'event.namespace') in r.json()["message"]


@pytest.mark.parametrize(("value", "ok"), [
    ("example.com", True), ("a", True), ("a-b.c", True), ("-a", False), ("a_b", False),
    ("A", False), ("a..b", False), ("a" * 253, True), ("a" * 254, False),
])
def test_dns1123_subdomain(value: str, ok: bool) -> None:
    """IsDNS1123Subdomain (validation_test.go's valid/invalid cases)."""
    assert (kube_validation.is_dns1123_subdomain(value) == []) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("prefix.io/name", True), ("name", True), ("a/b/c", False), ("/name", False),
    ("Prefix/name", False), ("name_with.dots-and_underscores", True), ("-name", False),
])
def test_qualified_name(value: str, ok: bool) -> None:
    """IsQualifiedName."""
    assert (kube_validation.is_qualified_name(value) == []) is ok
