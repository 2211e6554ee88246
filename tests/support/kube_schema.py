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

Validation answers are memoised per schema (``StructuralSchema`` is rebuilt whenever a CRD
changes): each top-level property's OpenAPI errors and CEL causes are pure functions of
that property's value (and, for a subtree holding a transition rule, of its old value), so
they are kept, keyed by a 128-bit BLAKE2b digest of ``repr`` of the value(s), in a bounded
map; so is what pruning, dropping nulls and defaulting make of each top-level property
(:meth:`StructuralSchema.admit`; the result is shared, as stored objects are never changed
in place).  A status write does not re-check an unchanged ``spec``, a metadata PATCH re-checks
neither ``spec`` nor ``status``; every write still runs every check on what changed, and
the answers are the same as without the memo (tests/test_kube_schema_memo.py).

Deliberate deviation: the real server echoes offending string values in messages; we say
``Invalid value: "string"`` instead, because a value in a manifest might be a secret that
a user pasted by mistake and tests grep every output for canaries.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
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


# Root keywords that do not look into the properties' values: with only these next to
# ``properties`` at the root, the root's errors are the errors of these keywords plus those of
# each property's own schema on that property's value (what ``properties`` does).
_ROOT_KEYWORDS = frozenset({"type", "required", "description", "title", "nullable",
                            "example", "externalDocs"})
MEMO_SIZE = 16384  # answers kept per schema, per part (OpenAPI, CEL)


def _digest(*values: Any) -> bytes:
    """The memo's key: ``repr`` tells apart every value JSON or YAML can decode to (``1`` /
    ``1.0`` / ``True`` / ``"1"``, key types, order), hashed to bound the memo's size."""
    return hashlib.blake2b(repr(values).encode("utf-8", "backslashreplace"),
                           digest_size=16).digest()


class _Memo:
    """A bounded map (oldest answers dropped first) with hit/miss counts."""

    def __init__(self, size: int) -> None:
        self.size, self.hits, self.misses = size, 0, 0
        self._answers: dict[bytes, Any] = {}

    def get(self, key: bytes) -> Any:
        answer = self._answers.get(key)
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    def __len__(self) -> int:
        return len(self._answers)

    def put(self, key: bytes, answer: Any) -> None:
        if len(self._answers) >= self.size:
            del self._answers[next(iter(self._answers))]
        self._answers[key] = answer


class StructuralSchema:
    """One CRD version's schema: prune, default, validate (OpenAPI + CEL).

    Every CEL rule is compiled when the schema is built (``kube_cel.CelError`` for a rule
    the server would refuse); ``compile_rules=False`` skips them (for checking defaults)."""

    def __init__(self, openapi_schema: Mapping[str, Any], compile_rules: bool = True,
                 memo_size: int = MEMO_SIZE) -> None:
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
        # The root split for the memo (None: validate the body as one document, as
        # without a memo: ``memo_size=0`` is the long way, the reference of the tests).
        self._split: tuple[Any, dict[str, Any], Any] | None = None
        keys = list(json_schema)
        if memo_size > 0 and isinstance(json_schema.get("properties"), dict) and all(
                k == "properties" or k in _ROOT_KEYWORDS or k.startswith("x-kubernetes-")
                for k in keys):
            at = keys.index("properties")
            before = {k: json_schema[k] for k in keys[:at]}
            after = {k: json_schema[k] for k in keys[at + 1:]}
            self._split = (_Validator(before) if before else None,
                           {name: _Validator(sub) for name, sub in props.items()},
                           _Validator(after) if after else None)
        self.openapi_memo = _Memo(memo_size)
        self.cel_memo = _Memo(memo_size)
        self.admit_memo = _Memo(memo_size)
        self._transition: dict[int, bool] = {}

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

    def admit(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``default(drop_nulls(prune(obj)))`` and ``unknown_fields(obj)`` (what a write of
        ``obj`` stores and the fields it drops), each top-level property the schema declares
        through the memo: the same answer, in the same key order, as the four walks."""
        props = self.schema.get("properties")
        top = ("apiVersion", "kind", "metadata")
        if not self._split or not isinstance(props, dict) or any(
                (obj[k] is None) if k in top else not (props.get(k) and obj[k] is not None)
                for k in obj):
            return self.default(self.drop_nulls(self.prune(obj))), self.unknown_fields(obj)
        # Only declared, non-null properties besides apiVersion/kind/metadata: pruning drops
        # nothing at the root, dropping nulls drops nothing at the root, and the root's
        # defaults only add absent properties (at the end, in the schema's order).
        head = self.default(self.drop_nulls({k: v for k, v in obj.items() if k in top}))
        out: dict[str, Any] = {}
        unknown: list[str] = []
        for k, v in obj.items():
            if k in top:
                out[k] = head[k]
                continue
            sub = props[k]
            key = _digest("admit", k, v)
            answer: tuple[Any, list[str]] | None = self.admit_memo.get(key)
            if answer is None:
                found: list[str] = []
                self._unknown(v, sub, k, found)
                answer = (self._default(self._drop_nulls(self._prune(v, sub), sub), sub), found)
                self.admit_memo.put(key, answer)
            out[k] = answer[0]  # shared: stored objects are never changed in place
            unknown += answer[1]
        out.update((k, v) for k, v in head.items() if k not in obj)
        return out, unknown

    # --- validation ------------------------------------------------------------------
    def validate(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[Cause]:
        body = {k: v for k, v in obj.items() if k != "metadata"}
        causes = self._openapi(body)
        if causes:
            return causes
        if not self._rules:
            return causes
        old_body = None if old is None else {k: v for k, v in old.items() if k != "metadata"}
        if self._split is None:
            if self._convert:
                body = to_cel(body, self.schema)
                old_body = None if old_body is None else to_cel(old_body, self.schema)
            self._cel(body, old_body, self.schema, [], causes)
            return causes
        # The root's own rules see the whole body; each property's subtree is memoised.
        if self._rules.get(id(self.schema)):
            whole, whole_old = body, old_body
            if self._convert:
                whole = to_cel(body, self.schema)
                whole_old = None if old_body is None else to_cel(old_body, self.schema)
            self._cel_rules(whole, whole_old, self.schema, [], causes)
        props = self.schema.get("properties") or {}
        addl = self.schema.get("additionalProperties")
        for key, item in body.items():
            sub = props.get(key) or (addl if isinstance(addl, dict) and not props else None)
            if sub is None or key == "metadata":
                continue
            old_item = old_body.get(key) if isinstance(old_body, dict) else None
            causes += self._cel_memoised(key, item, old_item, sub)
        return causes

    def _openapi(self, body: dict[str, Any]) -> list[Cause]:
        """The OpenAPI errors of ``body``, sorted by path as one ``iter_errors`` run sorts
        them; with the root split, each property's errors come from the memo."""
        found: list[tuple[list[Any], Cause]] = []
        if self._split is None:
            for err in self._validator.iter_errors(body):
                path = list(err.absolute_path)
                found.append((path, self._cause(err, path)))
        else:
            before, props, after = self._split
            if before is not None:
                found += [(list(e.absolute_path), self._cause(e, list(e.absolute_path)))
                          for e in before.iter_errors(body)]
            for name, validator in props.items():  # the order ``properties`` descends in
                if name in body:
                    found += self._openapi_memoised(name, body[name], validator)
            if after is not None:
                found += [(list(e.absolute_path), self._cause(e, list(e.absolute_path)))
                          for e in after.iter_errors(body)]
        return [cause for _path, cause in sorted(found, key=lambda f: f[0])]

    def _openapi_memoised(self, name: str, value: Any,
                          validator: Any) -> list[tuple[list[Any], Cause]]:
        key = _digest("openapi", name, value)
        answer: list[tuple[list[Any], Cause]] | None = self.openapi_memo.get(key)
        if answer is None:
            answer = []
            for err in validator.iter_errors(value):
                path = [name, *err.absolute_path]
                answer.append((path, self._cause(err, path)))
            self.openapi_memo.put(key, answer)
        return [(list(path), dict(cause)) for path, cause in answer]

    def _cel_memoised(self, name: str, value: Any, old: Any,
                      schema: Mapping[str, Any]) -> list[Cause]:
        # A transition rule below sees the old value: then the old value is part of the key.
        key = _digest("cel", name, value, old if self._has_transition(schema) else None)
        answer: list[Cause] | None = self.cel_memo.get(key)
        if answer is None:
            answer = []
            if self._convert:
                value = to_cel(value, schema)
                old = None if old is None else to_cel(old, schema)
            self._cel(value, old, schema, [name], answer)
            self.cel_memo.put(key, answer)
        return [dict(cause) for cause in answer]

    def _has_transition(self, schema: Mapping[str, Any]) -> bool:
        """Does a rule in this subtree mention ``oldSelf``?"""
        known = self._transition.get(id(schema))
        if known is None:
            known = any(c.transition for _r, c in self._rules.get(id(schema), ())) or any(
                isinstance(sub, dict) and self._has_transition(sub) for sub in (
                    *(schema.get("properties") or {}).values(), schema.get("items"),
                    schema.get("additionalProperties")))
            self._transition[id(schema)] = known
        return known

    def _cause(self, err: jsonschema.ValidationError, path: list[Any]) -> Cause:
        return {"reason": "FieldValueInvalid", "message": self._message(err, path),
                "field": _path_str(path)}

    @staticmethod
    def _message(err: jsonschema.ValidationError, path: list[Any]) -> str:
        field = _path_str(path) or "<root>"
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
        self._cel_rules(value, old, schema, path, causes)
        self._cel_below(value, old, schema, path, causes)

    def _cel_rules(
        self, value: Any, old: Any, schema: Mapping[str, Any], path: list[Any], causes: list[Cause]
    ) -> None:
        """The rules of this node, on its value."""
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

    def _cel_below(
        self, value: Any, old: Any, schema: Mapping[str, Any], path: list[Any], causes: list[Cause]
    ) -> None:
        """The rules of the nodes below this one."""
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
