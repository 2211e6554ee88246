"""Generate the CustomResourceDefinitions (and the schema package copy) from ``schemas/``.

``python -m reconciler.schema.crdgen`` writes ``manifests/crds/*.yaml`` (with the
``kustomization.yaml`` the operator base includes), refreshes
``reconciler/schemas/*.json`` (the copy shipped in the package) and ``docs/resources.md``;
``--check`` only compares and exits 1 on drift (the tests do the same).

A CRD schema must be *structural* (Kubernetes rejects anything else): a type on every
node, no ``$ref``, no ``additionalProperties`` next to ``properties``, and combinators
(``allOf``/``anyOf``/``oneOf``/``not``, ``if``/``then``) only in a restricted form.  So:

* ``$ref`` is inlined, ``const`` becomes a one-value ``enum``;
* every cross-field rule (written in the JSON Schema as ``if``/``then`` or ``oneOf``)
  is dropped and emitted instead as a CEL rule in ``x-kubernetes-validations``: the
  JSON Schema node carries its CEL twin in ``x-cel`` and its message in ``x-message``,
  and ``tests/test_cel.py`` evaluates both over the corpus and demands the same verdicts;
* a node the API server cannot type as written (``scopes``: string-or-list) carries its
  structural form in ``x-crd``, which replaces it in the CRD (an untyped node would be
  invisible to CEL and unvalidated, so a combinator without one is an error here);
* ``status.conditions`` is a list-map keyed by ``type`` (``x-kubernetes-list-type: map``),
  so server-side apply merges conditions by type instead of replacing the list;
* ``metadata`` is left to the API server (it validates names itself);
* ``status`` is typed for ``kubectl explain`` and every object in it keeps unknown fields
  (``x-kubernetes-preserve-unknown-fields``), as the JSON Schema and the models do, so a
  newer reconciler can add fields without a CRD change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from reconciler.schema.schemas import (
    API_GROUP,
    KIND_OAUTH2,
    KIND_SMTP,
    PACKAGE_SCHEMA_DIR,
    SCHEMA_FILES,
    SOURCE_SCHEMA_DIR,
)

REPO = SOURCE_SCHEMA_DIR.parent
CRD_DIR = REPO / "manifests" / "crds"
DOCS = REPO / "docs" / "resources.md"

_DROP = {"$schema", "$id", "$defs", "examples", "title", "x-message", "x-at", "x-cel", "x-crd",
         "allOf", "anyOf", "oneOf", "if", "then", "else", "not", "additionalProperties"}

_NAMES = {
    KIND_SMTP: {"plural": "externalsmtps", "singular": "externalsmtp",
                "shortNames": ["esmtp"], "categories": ["smtp"]},
    KIND_OAUTH2: {"plural": "oauth2providers", "singular": "oauth2provider",
                  "shortNames": ["oauth2p"], "categories": ["smtp"]},
}

_READY = '.status.conditions[?(@.type=="Ready")]'
_COLUMNS = {
    KIND_SMTP: [
        {"name": "Host", "type": "string", "jsonPath": ".spec.host"},
        {"name": "Port", "type": "integer", "jsonPath": ".spec.port"},
        {"name": "Auth", "type": "string", "jsonPath": ".spec.authentication"},
        {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
        {"name": "Selected", "type": "boolean", "jsonPath": ".status.selected"},
        {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    KIND_OAUTH2: [
        {"name": "Grant", "type": "string", "jsonPath": ".spec.grantType"},
        {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
        {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}


def load_source(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SOURCE_SCHEMA_DIR / SCHEMA_FILES[kind]).read_text("utf-8"))
    return data


def _resolve(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def cel_rules(node: dict[str, Any]) -> list[dict[str, str]]:
    """The CEL rules a JSON Schema node carries (its own ``x-cel`` and its ``allOf`` items')."""
    rules: list[dict[str, str]] = []
    own = node.get("x-cel")
    if isinstance(own, list):
        rules.extend({"rule": r["rule"], "message": r["message"]} for r in own)
    for item in node.get("allOf", []):
        cel = item.get("x-cel")
        if cel is not None:
            rules.append({"rule": cel["rule"], "message": item["x-message"]})
    return rules


def structural(node: Any, root: dict[str, Any], *, status: bool = False) -> Any:
    """Translate one JSON Schema node into a structural OpenAPI v3 node."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        merged = {**_resolve(root, node["$ref"]), **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, root, status=status)
    if "x-crd" in node:
        typed = {**{k: v for k, v in node.items() if k in ("description", "default")},
                 **node["x-crd"]}
        return structural(typed, root, status=status)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
            out.setdefault("type", "string")
        elif key == "properties":
            out["properties"] = {k: structural(v, root, status=status) for k, v in value.items()}
        elif key == "items":
            out["items"] = structural(value, root, status=status)
        else:
            out[key] = value
    if "anyOf" in node and "type" not in node:
        raise ValueError("a node typed only by anyOf needs an x-crd structural form "
                         f"(the API server cannot type it): {sorted(node)}")
    if status and out.get("type") == "object":
        out["x-kubernetes-preserve-unknown-fields"] = True
    if isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
        out["additionalProperties"] = structural(node["additionalProperties"], root)
    rules = cel_rules(node)
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def crd(kind: str) -> dict[str, Any]:
    root = load_source(kind)
    props = root["properties"]
    spec = structural(props["spec"], root)
    status = structural(props["status"], root, status=True)
    conditions = status.get("properties", {}).get("conditions")
    if conditions is not None:
        # metav1.Condition lists are maps keyed by type (server-side apply merges by key).
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema = {
        "type": "object",
        "description": root["description"],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API group and version."},
            "kind": {"type": "string", "description": "Resource kind."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    names = {"kind": kind, "listKind": f"{kind}List", **_NAMES[kind]}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{names['plural']}.{API_GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "smtpctl"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": names,
            "versions": [{
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _COLUMNS[kind],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def render_crd(kind: str) -> str:
    header = (f"# Generated by `python -m reconciler.schema.crdgen` from "
              f"schemas/{SCHEMA_FILES[kind]}; do not edit.\n")
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100, allow_unicode=True)


def crd_path(kind: str) -> Path:
    return CRD_DIR / f"{_NAMES[kind]['plural']}.{API_GROUP}.yaml"


def outputs() -> dict[Path, str]:
    """Every generated file and its expected content."""
    from reconciler.schema.docgen import render_resources_md

    files: dict[Path, str] = {}
    for kind in (KIND_SMTP, KIND_OAUTH2):
        files[crd_path(kind)] = render_crd(kind)
        files[PACKAGE_SCHEMA_DIR / SCHEMA_FILES[kind]] = (
            SOURCE_SCHEMA_DIR / SCHEMA_FILES[kind]).read_text("utf-8")
    files[CRD_DIR / "kustomization.yaml"] = (
        "# Generated by `python -m reconciler.schema.crdgen`; do not edit.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
        + "".join(f"- {crd_path(k).name}\n" for k in (KIND_SMTP, KIND_OAUTH2)))
    files[DOCS] = render_resources_md()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.schema.crdgen",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if any output is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, content in outputs().items():
        current = path.read_text("utf-8") if path.exists() else None
        if current == content:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, "utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(REPO)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
