"""What the API server does with a custom resource before storing it, offline.

For a CRD version's ``openAPIV3Schema`` this applies, in the API server's order:
pruning of unknown fields (unless ``x-kubernetes-preserve-unknown-fields``), defaulting
(``default:``), OpenAPI schema validation, then the CEL rules of
``x-kubernetes-validations`` (transition rules, the ones that mention ``oldSelf``, only on
updates where the old value exists).  The schema check uses ``jsonschema`` (Draft 4 is the
dialect OpenAPI v3.0 schemas are written in) after translating ``nullable``, with ``pattern``
evaluated by RE2 (``google-re2``: the API server's Go regexp dialect, where ``$`` does not
match before a trailing newline).  CEL rules are compiled and type-checked once, when the
schema is built (tests/support/kube_cel.py, the C++ CEL implementation), and only evaluated
on writes.  Failures come back as ``causes`` shaped like the API server's
``FieldValueInvalid`` causes.

Deliberate deviation: the real server echoes offending string values in messages; we say
``Invalid value: "string"`` instead, because a value in a manifest might be a secret that
a user pasted by mistake and tests grep every output for canaries.
"""

from __future__ import annotations

import copy
import datetime
import functools
from collections.abc import Mapping
from typing import Any

import jsonschema
import re2

from tests.support import kube_cel

Cause = dict[str, str]


def _openapi_to_jsonschema(node: Any) -> Any:
    """Translate OpenAPI v3.0 ``nullable`` into a JSON Schema type list, recursively."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "default"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    return out


def _path_str(parts: list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_JSON_TYPES = {"str": "string", "dict": "object", "list": "array"}


def _show(value: Any) -> str:
    if isinstance(value, bool | int | float) or value is None:
        return repr(value).lower() if isinstance(value, bool) else repr(value)
    name = type(value).__name__
    return f'"{_JSON_TYPES.get(name, name)}"'


@functools.lru_cache(maxsize=4096)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern)


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and _re2(pattern).search(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _re2_pattern})


def _has_typed_values(node: Any) -> bool:
    """Does the schema declare numbers or formats CEL sees as double/timestamp?"""
    if isinstance(node, dict):
        if node.get("type") == "number" or node.get("format") in ("date-time", "date"):
            return True
        return any(_has_typed_values(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_typed_values(v) for v in node)
    return False


def _rfc3339(text: str) -> datetime.datetime | str:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text


def to_cel(value: Any, schema: Mapping[str, Any]) -> Any:
    """JSON as the API server hands it to CEL: ``number`` is double, dates are timestamps."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        return {k: to_cel(v, props.get(k) or (addl if isinstance(addl, dict) else {}))
                for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [to_cel(v, items if isinstance(items, dict) else {}) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and schema.get("format") in ("date-time", "date"):
        return _rfc3339(value)
    return value


class StructuralSchema:
    """One CRD version's schema: prune, default, validate (OpenAPI + CEL).

    Every CEL rule is compiled when the schema is built (``kube_cel.CelError`` for a rule
    the server would refuse); ``compile_rules=False`` skips them (for checking defaults)."""

    def __init__(self, openapi_schema: Mapping[str, Any], compile_rules: bool = True) -> None:
        self.schema: dict[str, Any] = copy.deepcopy(dict(openapi_schema))
        json_schema = _openapi_to_jsonschema(self.schema)
        # metadata is validated by the server's own rules, not the CRD schema.
        props = json_schema.get("properties", {})
        props.pop("metadata", None)
        self._validator = _Validator(json_schema)
        self._rules: dict[int, list[tuple[dict[str, Any], kube_cel.CompiledRule]]] = {}
        self._convert = _has_typed_values(self.schema)
        if compile_rules:
            self._compile(self.schema, kube_cel.decl_type(self.schema, root=True))

    def _compile(self, node: Any, decl: kube_cel.DeclType | None) -> None:
        if not isinstance(node, dict):
            return
        rules = node.get("x-kubernetes-validations") or []
        if rules:
            self._rules[id(node)] = [(r, kube_cel.compile_rule(decl, r["rule"])) for r in rules]
        for name, sub in (node.get("properties") or {}).items():
            escaped = kube_cel.escape(name)
            child = decl.fields.get(escaped) if decl is not None and escaped else None
            self._compile(sub, child)
        elem = decl.elem if decl is not None else None
        if isinstance(node.get("items"), dict):
            self._compile(node["items"], elem)
        if isinstance(node.get("additionalProperties"), dict):
            self._compile(node["additionalProperties"], elem)

    # --- pruning and defaulting -------------------------------------------------------
    def prune(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Drop fields the schema does not declare (the server's structural pruning)."""
        out = dict(obj)
        for key in list(out):
            if key in ("apiVersion", "kind", "metadata"):
                continue
            sub = self.schema.get("properties", {}).get(key)
            if sub is None and not self.schema.get("x-kubernetes-preserve-unknown-fields"):
                del out[key]
            elif sub is not None:
                out[key] = self._prune(out[key], sub)
        return out

    def _prune(self, value: Any, schema: Mapping[str, Any]) -> Any:
        # x-kubernetes-preserve-unknown-fields keeps unknown keys *at that level*; declared
        # properties below it are still pruned by their own schemas (as the server does).
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        if isinstance(value, dict):
            props = schema.get("properties")
            addl = schema.get("additionalProperties")
            if props is None and isinstance(addl, dict):
                return {k: self._prune(v, addl) for k, v in value.items()}
            if props is None and (preserve or addl is True):
                return value
            props = props or {}
            return {k: (self._prune(v, props[k]) if k in props else v)
                    for k, v in value.items() if k in props or preserve}
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self._prune(v, schema["items"]) for v in value]
        return value

    def unknown_fields(self, obj: Mapping[str, Any]) -> list[str]:
        """Dotted paths of the fields pruning would drop (``fieldValidation=Strict``)."""
        out: list[str] = []
        self._unknown(obj, self.schema, "", out, top=True)
        return out

    def _unknown(self, value: Any, schema: Mapping[str, Any], path: str, out: list[str],
                 top: bool = False) -> None:
        if isinstance(value, dict):
            props = schema.get("properties")
            addl = schema.get("additionalProperties")
            if props is None and isinstance(addl, dict):
                for k, v in value.items():
                    self._unknown(v, addl, f"{path}.{k}" if path else k, out)
                return
            if props is None and (schema.get("x-kubernetes-preserve-unknown-fields")
                                  or addl is True):
                return
            for k, v in value.items():
                child = f"{path}.{k}" if path else k
                if top and k in ("apiVersion", "kind", "metadata"):
                    continue
                if props is not None and k in props:
                    self._unknown(v, props[k], child, out)
                elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                    out.append(child)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, v in enumerate(value):
                self._unknown(v, schema["items"], f"{path}[{i}]", out)

    def drop_nulls(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``PruneNonNullableNullsWithoutDefaults``: a ``null`` where the schema is not
        ``nullable`` is dropped (a default then fills it), as the server does on decode."""
        out: dict[str, Any] = self._drop_nulls(obj, self.schema)
        return out

    def _drop_nulls(self, value: Any, schema: Mapping[str, Any]) -> Any:
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            addl = schema.get("additionalProperties")
            out = {}
            for k, v in value.items():
                sub = props.get(k) or (addl if isinstance(addl, dict) else None)
                if v is None and sub is not None and not sub.get("nullable"):
                    continue
                out[k] = self._drop_nulls(v, sub) if sub is not None else v
            return out
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self._drop_nulls(v, schema["items"]) for v in value]
        return value

    def default(self, obj: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._default(obj, self.schema)
        return out

    def _default(self, value: Any, schema: Mapping[str, Any]) -> Any:
        if isinstance(value, dict):
            out = dict(value)
            for key, sub in (schema.get("properties") or {}).items():
                if key not in out and "default" in sub:
                    out[key] = copy.deepcopy(sub["default"])
                if key in out:
                    out[key] = self._default(out[key], sub)
            return out
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self._default(v, schema["items"]) for v in value]
        return value

    # --- validation ------------------------------------------------------------------
    def validate(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[Cause]:
        body = {k: v for k, v in obj.items() if k != "metadata"}
        causes: list[Cause] = []
        for err in sorted(self._validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            field = _path_str(list(err.absolute_path))
            msg = self._message(err)
            causes.append({"reason": "FieldValueInvalid", "message": msg, "field": field})
        if causes:
            return causes
        if not self._rules:
            return causes
        old_body = None if old is None else {k: v for k, v in old.items() if k != "metadata"}
        if self._convert:
            body = to_cel(body, self.schema)
            old_body = None if old_body is None else to_cel(old_body, self.schema)
        self._cel(body, old_body, self.schema, [], causes)
        return causes

    @staticmethod
    def _message(err: jsonschema.ValidationError) -> str:
        field = _path_str(list(err.absolute_path)) or "<root>"
        if err.validator == "required":
            missing = str(err.message).split("'")[1] if "'" in err.message else "?"
            child = f"{field}.{missing}" if field != "<root>" else missing
            return f"{child}: Required value"
        shown = _show(err.instance)
        v = err.validator_value
        if err.validator == "enum":
            detail = "should be one of: " + ", ".join(f'"{x}"' for x in v)
        else:
            detail = {
                "minimum": f"should be greater than or equal to {v}",
                "maximum": f"should be less than or equal to {v}",
                "minLength": f"should be at least {v} chars long",
                "maxLength": f"may not be more than {v} bytes",
                "pattern": f"should match '{v}'",
                "type": f"must be of type {v}",
            }.get(str(err.validator), f"failed {err.validator} validation")
        return f"{field}: Invalid value: {shown}: {field} in body {detail}"

    def _cel(
        self, value: Any, old: Any, schema: Mapping[str, Any], path: list[Any], causes: list[Cause]
    ) -> None:
        for rule_def, compiled in self._rules.get(id(schema), ()):
            if compiled.transition and old is None:
                continue
            try:
                ok = kube_cel.evaluate(compiled, value, old)
            except Exception as exc:  # a CEL runtime error is a validation failure too
                ok = False
                rule_def = {**rule_def, "message": rule_def.get("message") or f"error: {exc}"}
            if not ok:
                field = _path_str(path + [p for p in rule_def.get("fieldPath", "").split(".") if p])
                msg = rule_def.get("message") or f"failed rule: {compiled.rule}"
                shown = _JSON_TYPES.get(type(value).__name__, type(value).__name__)
                causes.append(
                    {
                        "reason": rule_def.get("reason") or "FieldValueInvalid",
                        "field": field,
                        "message": f'{field or "<root>"}: Invalid value: "{shown}": {msg}',
                    }
                )
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            addl = schema.get("additionalProperties")
            for key, item in value.items():
                sub = props.get(key) or (addl if isinstance(addl, dict) and not props else None)
                if sub is None or key == "metadata":
                    continue
                old_sub = old.get(key) if isinstance(old, dict) else None
                self._cel(item, old_sub, sub, [*path, key], causes)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            items = schema["items"]
            keys = schema.get("x-kubernetes-list-map-keys") if schema.get(
                "x-kubernetes-list-type") == "map" else None
            olds: dict[Any, Any] = {}
            if keys and isinstance(old, list):
                olds = {tuple(o.get(k) for k in keys): o for o in old if isinstance(o, dict)}
            for i, item in enumerate(value):
                old_item = olds.get(tuple(item.get(k) for k in keys)) if keys and isinstance(
                    item, dict) else None
                self._cel(item, old_item, items, [*path, i], causes)
