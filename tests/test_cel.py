"""The CRD (OpenAPI schema + CEL rules, evaluated offline with cel-python) gives the same
verdict as the JSON Schema on the whole corpus and its mutations.

The API server is emulated as ``kubectl apply`` meets it: the request is routed by
apiVersion/kind, metadata is validated by the server's built-in rules (modelled with the
schema's ObjectMeta), unknown fields are rejected (kubectl's default
``--validate=strict``), the OpenAPI keywords are checked, then every
``x-kubernetes-validations`` rule runs with ``self`` bound to its node.

One documented deviation: ``OAuth2Provider.spec.scopes`` is string-or-list in local
manifests, which a structural schema cannot type; the CRD types it as a list of strings, so
the original form's single space/comma separated string is refused by the API server
(docs/resources.md says so).

CEL rules run through the emulator's pipeline (tests/support/kube_schema.py): compiled and
type-checked once against the CRD's declared types, then evaluated.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema_rs
import pytest
import yaml

from reconciler.schema import crdgen
from reconciler.schema.schemas import API_VERSION, KIND_OAUTH2, KIND_SMTP, load_schema, validator
from tests.corpus.cases import invalid_cases, mutations, valid_cases
from tests.support.kube_schema import StructuralSchema


def _strict(node: Any) -> Any:
    """OpenAPI node -> JSON Schema with unknown fields rejected (kubectl --validate=strict)."""
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) if k in ("items", "additionalProperties") else v
           for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("default", "properties")}
    if "properties" in node:
        out["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def openapi(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(crdgen.crd_path(kind).read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def structural_validator(kind: str) -> Any:
    schema = _strict(openapi(kind))
    schema["required"] = ["apiVersion", "kind", "metadata", *schema.get("required", [])]
    schema["properties"]["apiVersion"]["enum"] = [API_VERSION]   # request routing
    schema["properties"]["kind"]["enum"] = [kind]
    meta = load_schema(kind)["$defs"]["ObjectMeta"]            # the server's own rules
    schema["properties"]["metadata"] = meta
    # OpenAPI v3.0 schemas are Draft 4 dialect; jsonschema_rs evaluates patterns with
    # ECMA-262 semantics, as the API server's RE2 does for these patterns.
    return jsonschema_rs.Draft4Validator(schema)


@functools.cache
def _pipeline(kind: str) -> StructuralSchema:
    return StructuralSchema(openapi(kind))


def cel_failures(kind: str, doc: dict[str, Any]) -> list[str]:
    """The CEL rules ``doc`` breaks (after the OpenAPI checks passed)."""
    return [c["message"] for c in _pipeline(kind).validate(doc)]


def crd_accepts(doc: dict[str, Any]) -> bool:
    kind = doc["kind"] if doc.get("kind") in (KIND_SMTP, KIND_OAUTH2) else KIND_SMTP
    if not structural_validator(kind).is_valid(doc):
        return False
    return not cel_failures(kind, doc)


def schema_expectation(doc: dict[str, Any]) -> bool:
    """The JSON Schema verdict, adjusted for the documented scopes deviation."""
    kind = doc["kind"]
    valid: bool = validator(kind).is_valid(doc)  # agrees with the reference: see
    spec = doc.get("spec")                 # tests/test_schema_agreement.py
    if kind == KIND_OAUTH2 and isinstance(spec, dict) and isinstance(spec.get("scopes"), str):
        return False  # the CRD types scopes as a list; only local manifests take a string
    return valid


def _all_cases() -> list[tuple[str, dict[str, Any]]]:
    return [*valid_cases(), *invalid_cases()]


@pytest.mark.parametrize(("case", "doc"), _all_cases(), ids=[c for c, _ in _all_cases()])
def test_crd_agrees_with_json_schema_on_corpus(case: str, doc: dict[str, Any]) -> None:
    assert crd_accepts(doc) == schema_expectation(doc)


@pytest.mark.parametrize(("case", "doc"), valid_cases(), ids=[c for c, _ in valid_cases()])
def test_crd_agrees_with_json_schema_on_mutations(case: str, doc: dict[str, Any]) -> None:
    for label, variant in mutations(doc):
        assert crd_accepts(variant) == schema_expectation(variant), f"{case} {label}"


def test_each_cel_rule_rejects_its_own_violation() -> None:
    """Not only agreement: every rule fires on a document that breaks just that rule."""
    base: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": KIND_SMTP, "metadata": {"name": "a"},
        "spec": {"host": "h", "port": 25, "authentication": "UsernamePassword",
                     "username": "u", "passwordFrom": {"env": "P"}}}
    assert crd_accepts(base)
    broken: list[dict[str, Any]] = [
        {"passwordFrom": None},
        {"authentication": "OAuth2", "oauth2ProviderRef": {"name": "p"}},
        {"authentication": "OAuth2"},
        {"oauth2ProviderRef": {"name": "p"}},
        {"username": None},
        {"passwordFrom": {"env": "P", "file": "/f"}},
        {"socketFactory": {"class": "javax.net.ssl.SSLSocketFactory"}},
    ]
    for change in broken:
        doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base))
        for k, v in change.items():
            if v is None:
                del doc["spec"][k]
            else:
                doc["spec"][k] = v
        assert structural_validator(KIND_SMTP).is_valid(doc), change  # CEL's job alone
        assert cel_failures(KIND_SMTP, doc), change


def test_scopes_deviation_is_the_only_one() -> None:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND_OAUTH2,
                           "metadata": {"name": "p"},
           "spec": {"grantType": "ClientCredentials", "clientId": "c",
                    "clientSecretFrom": {"env": "S"}, "tokenEndpoint": "https://t"}}
    for scopes, crd, schema in (("a b", False, True), (["a"], True, True), (5, False, False),
                                ({"a": 1}, False, False), (["a", 5], False, False),
                                (["a"] * 65, False, False), (["x" * 1025], False, False)):
        doc["spec"]["scopes"] = scopes
        assert crd_accepts(doc) is crd, scopes
        assert validator(KIND_OAUTH2).is_valid(doc) is schema, scopes
