"""The generated CRDs: committed files match the generator, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.schema import crdgen
from reconciler.schema.schemas import KIND_OAUTH2, KIND_SMTP

ROOT = Path(__file__).resolve().parent.parent
KINDS = (KIND_SMTP, KIND_OAUTH2)


def load_crd(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(crdgen.crd_path(kind).read_text())
    return data


def test_committed_outputs_match_the_generator() -> None:
    stale = [str(p.relative_to(ROOT)) for p, content in crdgen.outputs().items()
             if not p.exists() or p.read_text("utf-8") != content]
    assert not stale, f"stale generated files {stale}: run `python -m reconciler.schema.crdgen`"


def test_check_mode_reports_no_drift() -> None:
    assert crdgen.main(["--check"]) == 0


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for name, child in node.get("properties", {}).items():
            out += _walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


FORBIDDEN = {"$ref", "$defs", "$schema", "$id", "allOf", "anyOf", "oneOf", "not", "if", "then",
             "else", "const", "examples", "x-message", "x-at", "x-cel"}


@pytest.mark.parametrize("kind", KINDS)
def test_crd_schema_is_structural(kind: str) -> None:
    schema = load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = _walk(schema)
    assert len(nodes) > 20
    for path, node in nodes:
        assert not FORBIDDEN & set(node), (path, FORBIDDEN & set(node))
        if path != ".metadata":
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "type" in node:
            assert isinstance(node["type"], str), path


@pytest.mark.parametrize("kind", KINDS)
def test_crd_carries_every_cross_field_rule_as_cel(kind: str) -> None:
    schema = load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r for _, n in _walk(schema) for r in n.get("x-kubernetes-validations", [])]
    source = crdgen.load_source(kind)
    spec = source["$defs"][f"{kind}Spec"]
    expected = {i["x-message"] for i in spec["allOf"]}
    assert expected <= {r["message"] for r in rules}
    assert all(r["rule"] and r["message"] for r in rules)
    assert "exactly one of secretKeyRef, env or file must be set" in {r["message"] for r in rules}


def test_names_columns_and_subresources() -> None:
    smtp = load_crd(KIND_SMTP)
    assert smtp["metadata"]["name"] == "externalsmtps.smtp.reconciler.dev"
    spec = smtp["spec"]
    assert spec["scope"] == "Namespaced" and spec["group"] == "smtp.reconciler.dev"
    assert spec["names"]["shortNames"] and spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols == ["Host", "Port", "Auth", "Ready", "Selected", "Reason", "Age"]
    oauth = load_crd(KIND_OAUTH2)["spec"]
    assert oauth["names"]["plural"] == "oauth2providers"
    assert oauth["versions"][0]["subresources"] == {"status": {}}


def test_kustomization_lists_both_crds() -> None:
    k = yaml.safe_load((crdgen.CRD_DIR / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(crdgen.crd_path(kind).name for kind in KINDS)


def test_resources_doc_covers_every_spec_field() -> None:
    text = (ROOT / "docs" / "resources.md").read_text()
    for kind in KINDS:
        spec = crdgen.load_source(kind)["$defs"][f"{kind}Spec"]
        for name in spec["properties"]:
            assert f"`spec.{name}`" in text, name


def _contains(big: Any, small: Any) -> bool:
    """``small`` is ``big`` minus defaults: every value of ``small`` is in ``big``."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v)
                                             for k, v in small.items())
    return bool(big == small)


def test_valid_corpus_survives_the_api_server_pipeline() -> None:
    """Prune, default, then OpenAPI + CEL (tests/support/kube_schema.py, the emulator the
    operator tests use): every valid manifest is admitted and keeps its fields."""
    from tests.corpus.cases import valid_cases
    from tests.support.kube_schema import StructuralSchema

    schemas = {kind: StructuralSchema(
        load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) for kind in KINDS}
    for case, doc in valid_cases():
        s = schemas[doc["kind"]]
        stored = s.default(s.prune(doc))
        if isinstance(doc["spec"].get("scopes"), str):
            # the one documented deviation: the CRD types scopes as a list of strings
            assert [c["field"] for c in s.validate(stored)] == ["spec.scopes"], case
            continue
        assert s.validate(stored) == [], case
        assert _contains(stored["spec"], doc["spec"]), case  # nothing pruned


def test_invalid_cross_field_cases_are_refused_by_the_api_server_pipeline() -> None:
    from tests.support.kube_schema import StructuralSchema

    s = StructuralSchema(load_crd(KIND_SMTP)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    doc = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND_SMTP,
           "metadata": {"name": "a"},
           "spec": {"host": "h", "port": 465, "authentication": "None",
                    "socketFactory": {"class": "javax.net.ssl.SSLSocketFactory"}}}
    causes = s.validate(s.default(s.prune(doc)))
    assert any("socketFactory.port is required when socketFactory.class is set" in c["message"]
               for c in causes), causes


# --- the API server's CRD admission over what we ship ------------------------------------
# apiextensions-apiserver validates a CRD on create/update (validation.go,
# schema/validation.go, schema/cel/compilation.go); tests/support/kube_crd.py models it.


def _shipped_crds() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(crdgen.CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out.append((path.name, doc))
    return out


def test_every_shipped_crd_is_admitted_by_the_api_server_rules() -> None:
    """Every CRD in manifests/crds passes structural-schema, RE2-pattern, default and CEL
    type-check/cost admission, so a bad CRD fails here before any e2e test runs."""
    from tests.support.kube_crd import validate_crd

    crds = _shipped_crds()
    assert {doc["spec"]["names"]["kind"] for _, doc in crds} == set(KINDS)
    for name, doc in crds:
        assert validate_crd(doc) == [], name


def test_every_cel_rule_in_the_shipped_crds_type_checks() -> None:
    """Each rule compiles against the declared type of its node (not only "no causes")."""
    from tests.support.kube_cel import compile_rule, decl_type

    count = 0

    def walk(node: Any, decl: Any) -> None:
        nonlocal count
        for rule in node.get("x-kubernetes-validations", []):
            compiled = compile_rule(decl, rule["rule"])
            assert compiled.cost < 10_000_000, rule
            count += 1
        for key, child in node.get("properties", {}).items():
            walk(child, decl.fields.get(key) if decl is not None else None)
        if isinstance(node.get("items"), dict):
            walk(node["items"], decl.elem if decl is not None else None)

    for _name, doc in _shipped_crds():
        schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        walk(schema, decl_type(schema, root=True))
    assert count >= 10


def test_scopes_is_a_typed_list_in_the_crd() -> None:
    """The API server cannot type string-or-list; the CRD uses a bounded list of strings."""
    spec = load_crd(KIND_OAUTH2)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    scopes = spec["properties"]["scopes"]
    assert scopes["type"] == "array" and scopes["items"]["type"] == "string"
    assert scopes["maxItems"] and scopes["items"]["maxLength"]
    assert "x-kubernetes-preserve-unknown-fields" not in scopes
    assert "only the list form" in scopes["description"]


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    for kind in KINDS:
        status = load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["status"]
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]
