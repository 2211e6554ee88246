"""``docs/resources.md``: the field reference, generated from the JSON Schemas.

Generated (by ``python -m reconciler.schema.crdgen``) rather than written so it cannot
drift from the schemas; ``tests/test_crd.py`` fails when the committed file is stale.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.schema.schemas import KIND_OAUTH2, KIND_SMTP, SCHEMA_FILES, SOURCE_SCHEMA_DIR


def _load(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SOURCE_SCHEMA_DIR / SCHEMA_FILES[kind]).read_text("utf-8"))
    return data


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "anyOf" in node and "type" not in node:
        return " or ".join(str(n.get("type", "?")) for n in node["anyOf"])
    t = str(node.get("type", "object"))
    if t == "array" and isinstance(node.get("items"), dict):
        t = f"array of {node['items'].get('type', 'object')}"
    bounds = []
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in node:
            bounds.append(f"{word} {node[key]}")
    if "maxLength" in node:
        bounds.append(f"≤ {node['maxLength']} chars")
    return t + (f" ({', '.join(bounds)})" if bounds else "")


def _rows(root: dict[str, Any], node: dict[str, Any], prefix: str, out: list[str]) -> None:
    node = _deref(root, node)
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        child = _deref(root, child)
        path = f"{prefix}.{name}" if prefix else name
        default = f"`{json.dumps(child['default'])}`" if "default" in child else ""
        desc = child.get("description", "").replace("|", "\\|").replace("\n", " ")
        if "x-message" in child and "pattern" in child:
            desc += f" Validation: {child['x-message']}."
        out.append(f"| `{path}` | {_type(child)} | {'yes' if name in required else ''} | "
                   f"{default} | {desc} |")
        if child.get("type") == "object" and "properties" in child:
            _rows(root, child, path, out)


def _rules(node: dict[str, Any]) -> list[str]:
    msgs = [item["x-message"] for item in node.get("allOf", []) if "x-message" in item]
    return msgs


def render_resources_md() -> str:
    lines = [
        "# Resource reference",
        "",
        "Generated from `schemas/*.json` by `python -m reconciler.schema.crdgen`; do not edit.",
        "API group `smtp.reconciler.dev`, version `v1alpha1`, both kinds namespaced.",
        "Editors: see docs/validate.md for the `# yaml-language-server: $schema=...` hookup.",
        "",
    ]
    for kind in (KIND_SMTP, KIND_OAUTH2):
        root = _load(kind)
        spec = _deref(root, root["properties"]["spec"])
        lines += [f"## {kind}", "", root["description"], "",
                  f"Schema: `schemas/{SCHEMA_FILES[kind]}` (`$id` {root['$id']}).", "",
                  "### spec", "",
                  "| Field | Type | Required | Default | Description |",
                  "| --- | --- | --- | --- | --- |"]
        rows: list[str] = []
        _rows(root, spec, "spec", rows)
        lines += rows
        rules = _rules(spec)
        for name, child in spec.get("properties", {}).items():
            child = _deref(root, child)
            rules += [f"{name}: {m}" for m in _rules(child)]
        secret_ref = root["$defs"]["SecretRef"]
        rules.append(f"every *From reference: {secret_ref['x-message']}")
        lines += ["", "Cross-field rules (JSON Schema `if`/`then`, CEL in the CRD):", ""]
        lines += [f"- {r}" for r in rules]
        lines += ["", "### status (written by the reconciler)", "",
                  "| Field | Type | Required | Default | Description |",
                  "| --- | --- | --- | --- | --- |"]
        rows = []
        _rows(root, root["properties"]["status"], "status", rows)
        lines += [*rows, ""]
    lines += ["## Shared shapes", "", "### SecretRef (passwordFrom, clientSecretFrom, "
              "refreshTokenFrom, tls.caBundleFrom)", "",
              "| Field | Type | Required | Default | Description |",
              "| --- | --- | --- | --- | --- |"]
    root = _load(KIND_SMTP)
    rows = []
    _rows(root, root["$defs"]["SecretRef"], "", rows)
    lines += [*rows, ""]
    return "\n".join(lines)
