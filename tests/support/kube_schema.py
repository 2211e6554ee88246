"""What the API server does with a custom resource before storing it, offline.

For a CRD version's ``openAPIV3Schema`` this applies, in the API server's order:
pruning of unknown fields (unless ``x-kubernetes-preserve-unknown-fields``), defaulting
(``default:``), OpenAPI schema validation, then the CEL rules of
``x-kubernetes-validations`` (transition rules, the ones that mention ``oldSelf``, only on
updates where the old value exists).  The schema check uses ``jsonschema`` (Draft 4 is the
dialect OpenAPI v3.0 schemas are written in) after translating ``nullable``; CEL uses
``celpy``.  Failures come back as ``causes`` shaped like the API server's
``FieldValueInvalid`` causes.

Deliberate deviation: the real server echoes offending string values in messages; we say
``Invalid value: "string"`` instead, because a value in a manifest might be a secret that
a user pasted by mistake and tests grep every output for canaries.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import celpy
import jsonschema

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


def _show(value: Any) -> str:
    if isinstance(value, bool | int | float) or value is None:
        return repr(value).lower() if isinstance(value, bool) else repr(value)
    return f'"{type(value).__name__}"'


class StructuralSchema:
    """One CRD version's schema: prune, default, validate (OpenAPI + CEL)."""

    def __init__(self, openapi_schema: Mapping[str, Any]) -> None:
        self.schema: dict[str, Any] = copy.deepcopy(dict(openapi_schema))
        json_schema = _openapi_to_jsonschema(self.schema)
        # metadata is validated by the server's own rules, not the CRD schema.
        props = json_schema.get("properties", {})
        props.pop("metadata", None)
        self._validator = jsonschema.Draft4Validator(json_schema)
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

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
        old_body = None if old is None else {k: v for k, v in old.items() if k != "metadata"}
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

    def _program(self, rule: str) -> Any:
        prog = self._programs.get(rule)
        if prog is None:
            prog = self._env.program(self._env.compile(rule))
            self._programs[rule] = prog
        return prog

    def _cel(
        self, value: Any, old: Any, schema: Mapping[str, Any], path: list[Any], causes: list[Cause]
    ) -> None:
        for rule_def in schema.get("x-kubernetes-validations", []):
            rule = rule_def["rule"]
            transition = "oldSelf" in rule
            if transition and old is None:
                continue
            activation: dict[str, Any] = {"self": celpy.json_to_cel(value)}
            if transition:
                activation["oldSelf"] = celpy.json_to_cel(old)
            try:
                ok = bool(self._program(rule).evaluate(activation))
            except Exception as exc:  # a CEL runtime error is a validation failure too
                ok = False
                rule_def = {**rule_def, "message": rule_def.get("message") or f"error: {exc}"}
            if not ok:
                field = _path_str(path + [p for p in rule_def.get("fieldPath", "").split(".") if p])
                msg = rule_def.get("message") or f"failed rule: {rule}"
                causes.append(
                    {
                        "reason": "FieldValueInvalid",
                        "field": field,
                        "message": f'{field or "<root>"}: Invalid value: "object": {msg}',
                    }
                )
        if isinstance(value, dict):
            for key, sub in (schema.get("properties") or {}).items():
                if key in value and key != "metadata":
                    old_sub = old.get(key) if isinstance(old, dict) else None
                    self._cel(value[key], old_sub, sub, [*path, key], causes)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                self._cel(item, None, schema["items"], [*path, i], causes)
