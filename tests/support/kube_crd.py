"""CustomResourceDefinition admission, modelled on apiextensions-apiserver.

:func:`validate_crd` returns the causes a real API server gives when a CRD is created or
updated (``pkg/apis/apiextensions/validation/validation.go`` and
``pkg/apiserver/schema/validation.go``), with the same field paths and message shapes:

* names: ``metadata.name`` must be ``spec.names.plural + "." + spec.group``; group has a dot;
  plural/singular/kind/listKind required; exactly one storage version; unique versions;
* every served version has ``schema.openAPIV3Schema`` and it is *structural*: a ``type`` on
  every node (except ``x-kubernetes-int-or-string`` / ``x-kubernetes-preserve-unknown-fields``
  nodes), a supported type name, ``items`` on arrays, no ``additionalProperties`` beside
  ``properties`` or at the root, no ``$ref``/``definitions``/``patternProperties``/
  ``dependencies``/``additionalItems``/``id``/``uniqueItems``, ``metadata`` restricted to
  ``name``/``generateName`` at the root, list-type/map-key invariants;
* every ``pattern`` compiles as RE2 (``google-re2``, the Go regexp dialect: no look-around,
  no back-references);
* every ``default`` validates against its own schema;
* every ``x-kubernetes-validations`` rule is compiled and type-checked against the declared
  types (tests/support/kube_cel.py), with the per-rule and per-CRD cost limits.

Schemas that fail structural checks skip CEL compilation, as upstream does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import re2

from tests.support import kube_cel

Cause = dict[str, str]

_TYPES = ("array", "boolean", "integer", "number", "object", "string")
_FORBIDDEN = {"$ref": "$ref is not supported", "definitions": "definitions is not supported",
              "patternProperties": "patternProperties is not supported",
              "dependencies": "dependencies is not supported",
              "additionalItems": "additionalItems is not supported", "id": "id is not supported"}
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def required(path: str, detail: str = "") -> Cause:
    return {"reason": "FieldValueRequired", "field": path,
            "message": f"{path}: Required value" + (f": {detail}" if detail else "")}


def invalid(path: str, value: Any, detail: str) -> Cause:
    return {"reason": "FieldValueInvalid", "field": path,
            "message": f"{path}: Invalid value: {_show(value)}: {detail}"}


def forbidden(path: str, detail: str) -> Cause:
    return {"reason": "FieldValueForbidden", "field": path,
            "message": f"{path}: Forbidden: {detail}"}


def not_supported(path: str, value: Any, supported: tuple[str, ...]) -> Cause:
    shown = ", ".join(json.dumps(s) for s in supported)
    return {"reason": "FieldValueNotSupported", "field": path,
            "message": f"{path}: Unsupported value: {_show(value)}: supported values: {shown}"}


def default_crd(crd: dict[str, Any]) -> dict[str, Any]:
    """apiextensions/v1 defaults (``SetDefaults_CustomResourceDefinition*``): singular is the
    lower-cased kind, listKind is kind + "List", conversion strategy None."""
    spec = crd.get("spec")
    if isinstance(spec, dict):
        names = spec.setdefault("names", {})
        if names.get("kind"):
            names.setdefault("singular", str(names["kind"]).lower())
            names.setdefault("listKind", f"{names['kind']}List")
        spec.setdefault("conversion", {"strategy": "None"})
    return crd


def validate_crd(crd: Mapping[str, Any]) -> list[Cause]:
    """The causes a real API server would answer a create of ``crd`` with (empty: admitted)."""
    causes: list[Cause] = []
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        return [required("spec")]
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    name = (crd.get("metadata") or {}).get("name") or ""
    if not group:
        causes.append(required("spec.group"))
    elif "." not in group:
        causes.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    elif not _DNS1123_SUBDOMAIN.match(group):
        causes.append(invalid("spec.group", group, "a lowercase RFC 1123 subdomain must consist "
                              "of lower case alphanumeric characters, '-' or '.'"))
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            causes.append(required(f"spec.names.{key}"))
    for key in ("plural", "singular"):
        value = names.get(key)
        if value and not _DNS1035_LABEL.match(value):
            causes.append(invalid(f"spec.names.{key}", value,
                                  "a DNS-1035 label must consist of lower case alphanumeric "
                                  "characters or '-', start with an alphabetic character, and "
                                  "end with an alphanumeric character"))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        causes.append(invalid("spec.names.listKind", names["listKind"],
                              "kind and listKind may not be the same"))
    if name and names.get("plural") and group and name != f"{names['plural']}.{group}":
        causes.append(invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(not_supported("spec.scope", spec.get("scope"), ("Cluster", "Namespaced")))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(required("spec.versions", "must have exactly one version marked as "
                               "storage version"))
    seen: set[str] = set()
    for v in versions:
        if v.get("name") in seen:
            causes.append(invalid("spec.versions", "...", "must contain unique version names"))
        seen.add(v.get("name"))
    if versions and sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(invalid("spec.versions", "...",
                              "must have exactly one version marked as storage version"))
    total_cost = 0
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}].schema.openAPIV3Schema"
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            causes.append(required(path, "because otherwise all fields are pruned"))
            continue
        status = "status" in (version.get("subresources") or {})
        structural = _structural(schema, path, "root")
        if status and schema.get("type") == "object":
            extra = set(schema) - {"description", "type", "required", "properties",
                                   "x-kubernetes-validations",
                                   "x-kubernetes-preserve-unknown-fields",
                                   "nullable", "title"}
            if extra:
                structural.append(invalid(path, "...", "only description, type, properties, "
                                          "required, x-kubernetes-validations fields are allowed "
                                          "at the root of the schema if the status subresource "
                                          "is enabled"))
        causes += structural
        if structural:
            continue
        cel_causes, cost = _cel(schema, path, kube_cel.decl_type(schema, root=True), 1, True)
        causes += cel_causes
        total_cost += cost
        for j, col in enumerate(version.get("additionalPrinterColumns") or []):
            cpath = f"spec.versions[{i}].additionalPrinterColumns[{j}]"
            if not col.get("name"):
                causes.append(required(f"{cpath}.name"))
            if col.get("type") not in ("integer", "number", "string", "boolean", "date"):
                causes.append(not_supported(f"{cpath}.type", col.get("type"),
                                            ("boolean", "date", "integer", "number", "string")))
            if not col.get("jsonPath"):
                causes.append(required(f"{cpath}.JSONPath"))
    if total_cost > kube_cel.PER_CRD_COST_LIMIT:
        causes.append(forbidden("spec.validation.openAPIV3Schema", kube_cel.cost_error_message(
            "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
            total_cost, kube_cel.PER_CRD_COST_LIMIT)))
    return causes


def _structural(node: Any, path: str, level: str) -> list[Cause]:
    """``validateStructuralInvariants`` plus the generic value checks."""
    if not isinstance(node, Mapping):
        return [invalid(path, node, "must be a schema object")]
    causes: list[Cause] = []
    for key, detail in _FORBIDDEN.items():
        if key in node:
            causes.append(forbidden(f"{path}.{key}", detail))
    if node.get("uniqueItems") is True:
        causes.append(forbidden(f"{path}.uniqueItems", "uniqueItems cannot be set to true since "
                                "the runtime complexity becomes quadratic"))
    typ = node.get("type")
    if typ is not None and typ not in _TYPES:
        causes.append(not_supported(f"{path}.type", typ, _TYPES))
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if preserve is False:
        causes.append(invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False,
                              "must be true or undefined"))
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    if not typ and not int_or_string and not preserve:
        detail = {"root": "must not be empty at the root",
                  "item": "must not be empty for specified array items",
                  "field": "must not be empty for specified object fields"}[level]
        causes.append(required(f"{path}.type", detail))
    if level == "root" and typ and typ != "object":
        causes.append(invalid(f"{path}.type", typ, "must be object at the root"))
    if typ == "array" and "items" not in node:
        causes.append(required(f"{path}.items", "must be specified"))
    if isinstance(node.get("items"), list):
        causes.append(forbidden(f"{path}.items", "items must be a schema object and not an array"))
    elif "items" in node:
        causes += _structural(node["items"], f"{path}.items", "item")
    props = node.get("properties") or {}
    addl = node.get("additionalProperties")
    if addl is not None and props:
        causes.append(forbidden(f"{path}.additionalProperties",
                                "additionalProperties and properties are mutual exclusive"))
    if addl is not None and level == "root":
        causes.append(forbidden(f"{path}.additionalProperties", "must not be used at the root"))
    if isinstance(addl, Mapping):
        causes += _structural(addl, f"{path}.additionalProperties", "field")
    for name, prop in props.items():
        ppath = f"{path}.properties[{name}]"
        if name == "metadata" and level == "root":
            causes += _metadata(prop, ppath)
            continue
        if level == "root" and name in ("apiVersion", "kind") and isinstance(prop, Mapping) \
                and prop.get("type") != "string":
            causes.append(invalid(f"{ppath}.type", prop.get("type"), "must be string"))
        causes += _structural(prop, ppath, "field")
    for junctor in ("allOf", "anyOf", "oneOf"):
        for j, sub in enumerate(node.get(junctor) or []):
            causes += _nested(sub, f"{path}.{junctor}[{j}]")
    if "not" in node:
        causes += _nested(node["not"], f"{path}.not")
    pattern = node.get("pattern")
    if pattern is not None:
        try:
            re2.compile(pattern)
        except Exception as exc:
            causes.append(invalid(f"{path}.pattern", pattern,
                                  f"must be a valid regular expression, but isn't: {exc}"))
    causes += _list_type(node, path)
    causes += _rule_shapes(node, path)
    if "default" in node and not causes:
        causes += _default(node, path)
    return causes


def _nested(node: Any, path: str) -> list[Cause]:
    """Value validations under a junctor carry no structure (validateNestedValueValidation)."""
    if not isinstance(node, Mapping):
        return []
    causes: list[Cause] = []
    checks = {"type": "must be empty to be structural",
              "additionalProperties": "must be undefined to be structural",
              "default": "must be undefined to be structural",
              "title": "must be empty to be structural",
              "description": "must be empty to be structural",
              "nullable": "must be false to be structural",
              "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
              "x-kubernetes-embedded-resource": "must be false to be structural",
              "x-kubernetes-int-or-string": "must be false to be structural",
              "x-kubernetes-list-map-keys": "must be empty to be structural",
              "x-kubernetes-list-type": "must be undefined to be structural",
              "x-kubernetes-map-type": "must be undefined to be structural",
              "x-kubernetes-validations": "must be empty to be structural"}
    for key, detail in checks.items():
        if node.get(key):
            causes.append(forbidden(f"{path}.{key}", detail))
    return causes


def _metadata(node: Any, path: str) -> list[Cause]:
    if not isinstance(node, Mapping):
        return [invalid(f"{path}.type", node, "must be object")]
    causes: list[Cause] = []
    if node.get("type") != "object":
        causes.append(invalid(f"{path}.type", node.get("type"), "must be object"))
    rest = {k: v for k, v in node.items() if k not in ("type", "description")}
    props = rest.pop("properties", None) or {}
    if set(props) - {"name", "generateName"} or rest:
        causes.append(forbidden(path, "must not specify anything other than name and "
                                "generateName, but metadata is implicitly specified"))
    return causes


def _list_type(node: Mapping[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys")
    if list_type is not None:
        if node.get("type") != "array":
            causes.append(invalid(f"{path}.type", node.get("type"),
                                  "must be array if x-kubernetes-list-type is specified"))
        if list_type not in ("atomic", "set", "map"):
            causes.append(not_supported(f"{path}.x-kubernetes-list-type", list_type,
                                        ("atomic", "map", "set")))
    if keys and list_type != "map":
        causes.append(invalid(f"{path}.x-kubernetes-list-type", list_type,
                              "must be map if x-kubernetes-list-map-keys is non-empty"))
    if list_type == "map":
        items = node.get("items")
        if not keys:
            causes.append(required(f"{path}.x-kubernetes-list-map-keys",
                                   "must not be empty if x-kubernetes-list-type is map"))
        elif not isinstance(items, Mapping) or items.get("type") != "object":
            causes.append(invalid(f"{path}.items.type", (items or {}).get("type"),
                                  "must be object if parent array's x-kubernetes-list-type is map"))
        else:
            props = items.get("properties") or {}
            req = set(items.get("required") or [])
            for k in keys:
                if k not in props:
                    causes.append(invalid(f"{path}.x-kubernetes-list-map-keys", keys,
                                          "entries must all be names of item properties"))
                    continue
                if props[k].get("type") not in ("string", "integer", "number", "boolean"):
                    causes.append(invalid(f"{path}.items.properties[{k}].type",
                                          props[k].get("type"), "must be a scalar type if "
                                          "parent array's x-kubernetes-list-type is map"))
                if k not in req and "default" not in props[k]:
                    causes.append(required(f"{path}.items.properties[{k}].default",
                                           "this property is in x-kubernetes-list-map-keys, so "
                                           "it must have a default or be a required property"))
            if len(set(keys)) != len(keys):
                causes.append(invalid(f"{path}.x-kubernetes-list-map-keys", keys,
                                      "must not contain duplicate entries"))
    return causes


def _rule_shapes(node: Mapping[str, Any], path: str) -> list[Cause]:
    causes: list[Cause] = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        rpath = f"{path}.x-kubernetes-validations[{i}]"
        text = str(rule.get("rule") or "").strip()
        message = rule.get("message")
        if not text:
            causes.append(required(f"{rpath}.rule", "rule is not specified"))
        elif message is not None and not str(message).strip():
            causes.append(invalid(f"{rpath}.message", message, "must be non-empty if specified"))
        elif message is not None and ("\n" in str(message).strip()):
            causes.append(invalid(f"{rpath}.message", message, "must not contain line breaks"))
        elif "\n" in text and not str(message or "").strip():
            causes.append(required(f"{rpath}.message",
                                   "message must be specified if rule contains line breaks"))
        reason = rule.get("reason")
        if reason is not None and reason not in ("FieldValueInvalid", "FieldValueForbidden",
                                                 "FieldValueRequired", "FieldValueDuplicate"):
            causes.append(not_supported(f"{rpath}.reason", reason,
                                        ("FieldValueDuplicate", "FieldValueForbidden",
                                         "FieldValueInvalid", "FieldValueRequired")))
    return causes


def _default(node: Mapping[str, Any], path: str) -> list[Cause]:
    """A default must itself be valid (``structuraldefaulting.ValidateDefaults``)."""
    from tests.support.kube_schema import StructuralSchema

    wrapper = {"type": "object", "properties": {"v": {k: v for k, v in node.items()
                                                      if k != "default"}}}
    errors = StructuralSchema(wrapper, compile_rules=False).validate({"v": node["default"]})
    return [invalid(f"{path}.default", node["default"],
                    e["message"].split(": ", 1)[-1].replace("v:", "").strip())
            for e in errors]


def _cel(node: Any, path: str, decl: kube_cel.DeclType | None, cardinality: int,
         root: bool) -> tuple[list[Cause], int]:
    """Compile every rule below ``node`` against its declared type; (causes, total cost)."""
    if not isinstance(node, Mapping):
        return [], 0
    causes: list[Cause] = []
    total = 0
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        rpath = f"{path}.x-kubernetes-validations[{i}].rule"
        try:
            compiled = kube_cel.compile_rule(decl, rule["rule"])
        except kube_cel.CelError as exc:
            causes.append(invalid(rpath, dict(rule), str(exc)))
            continue
        if compiled.transition and cardinality < 0:
            causes.append(invalid(rpath, rule["rule"], "oldSelf cannot be used on the "
                                  "uncorrelatable portion of the schema"))
        cost = compiled.cost * abs(cardinality)
        total += cost
        if cost > kube_cel.PER_RULE_COST_LIMIT:
            causes.append(forbidden(rpath, kube_cel.cost_error_message(
                "estimated rule cost", cost, kube_cel.PER_RULE_COST_LIMIT)))
    if decl is None:
        return causes, total
    if decl.kind == "object":
        for name, prop in (node.get("properties") or {}).items():
            escaped = kube_cel.escape(name)
            sub = decl.fields.get(escaped) if escaped else None
            if name == "metadata" and root:
                continue
            embedded = isinstance(prop, Mapping) and bool(
                prop.get("x-kubernetes-embedded-resource"))
            c, t = _cel(prop, f"{path}.properties[{name}]", sub, cardinality, embedded)
            causes += c
            total += t
    elif decl.kind in ("list", "map"):
        child = node.get("items") if decl.kind == "list" else node.get("additionalProperties")
        key = "items" if decl.kind == "list" else "additionalProperties"
        # items of atomic/set lists and map values cannot be correlated with oldSelf
        correlatable = decl.kind == "map" or node.get("x-kubernetes-list-type") == "map"
        n = max(1, decl.max_elements) * abs(cardinality)
        c, t = _cel(child, f"{path}.{key}", decl.elem, n if correlatable else -n, False)
        causes += c
        total += t
    return causes, total
