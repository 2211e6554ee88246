"""Turning JSON Schema errors into messages a person understands, without leaking secrets.

Validator messages are written for schema authors (``"a:5" is not valid under any of the
schemas listed in the 'anyOf' keyword``) and they echo the offending value, which could
be a password pasted where a reference belongs.  So messages are built here from the
error's keyword and the schema, never by printing a container, and never echoing a value
under a secret-bearing field.

Schema nodes may carry two annotations for this module (ignored by validators, stripped
from the CRDs):

* ``x-message`` - the message for a failure of that node's own keywords or of its
  combinators (``anyOf``/``oneOf``/``allOf``/``if``/``then``); cross-field rules carry the
  same text as their CEL ``message``;
* ``x-at`` - for a rule on an object: the property the diagnostic should point at.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from reconciler.schema.diagnostics import JsonPath
from reconciler.schema.schemas import subschema

LITERAL_SECRET_FIELDS = {
    "password": "passwordFrom",
    "clientSecret": "clientSecretFrom",
    "refreshToken": "refreshTokenFrom",
}
_SENSITIVE = {"password", "clientSecret", "refreshToken", "passwordFrom", "clientSecretFrom",
              "refreshTokenFrom", "caBundleFrom", "accessToken", "apiKey", "secret", "token"}
_COMBINATOR = {"allOf", "anyOf", "oneOf", "not", "if", "then", "else"}
_OWN_MESSAGE = {"type", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum"}
"""Keywords whose generic message is already precise (an ``x-message`` would blur it)."""
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "a boolean (true or false)", "object": "a mapping", "array": "a list",
               "null": "null"}


class Message(NamedTuple):
    path: JsonPath
    text: str
    keyword: str
    relocated: bool = False  # a cross-field rule pointed at another field (``x-at``)


def is_sensitive(path: JsonPath) -> bool:
    """Whether a value at ``path`` may be a secret (so it is never echoed)."""
    for part in path:
        if isinstance(part, str):
            low = part.lower()
            if part in _SENSITIVE or "password" in low or "secret" in low:
                return True
    return False


def render_value(value: Any, path: JsonPath) -> str:
    if is_sensitive(path) and not isinstance(value, dict | list):
        return "the value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(shown, ensure_ascii=False)
    if value is None:
        return "null"
    return json.dumps(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else "null"


def _annotation(
    chain: list[Any], schema_path: list[str | int]
) -> tuple[str | None, str | None, int]:
    """(x-message, x-at, properties steps below the annotated node) for an error.

    The annotated node must be the node owning the failing keyword, or reachable from it
    only through combinators (and, inside ``if``/``then``/``else``, ``properties``), so a
    message meant for a whole object never labels an error of one of its fields.
    """
    # chain[i] is the node reached after schema_path[:i]; the keyword is schema_path[-1].
    owner = len(schema_path) - 1
    props_below = 0
    i = owner
    best: tuple[str | None, str | None, int] = (None, None, 0)
    while i >= 0:
        node = chain[i] if i < len(chain) else None
        if isinstance(node, dict) and "x-message" in node:
            best = (node["x-message"], node.get("x-at"), props_below)
            break
        if i == 0:
            break
        step = schema_path[i - 1]
        parent_step = schema_path[i - 2] if i >= 2 else None
        if isinstance(step, int) and parent_step in _COMBINATOR:
            i -= 1
            continue
        if step in _COMBINATOR:
            i -= 1
            continue
        if parent_step == "properties" and i >= 3 and schema_path[i - 3] in ("if", "then", "else"):
            props_below += 1
            i -= 2
            continue
        break
    return best


def translate(kind: str, error: Any) -> list[Message]:
    """Messages for one jsonschema_rs ``ValidationError``."""
    keyword: str = error.kind.name
    ipath: JsonPath = tuple(error.instance_path)
    spath: list[str | int] = list(error.schema_path)
    chain = subschema(kind, spath)
    node = chain[-2] if len(chain) >= 2 else {}
    instance = error.instance
    details: dict[str, Any] = error.kind.as_dict()

    if keyword == "additionalProperties":
        unexpected = details.get("unexpected", [])[:100]  # bounded: hostile input
        return [_unknown_field(ipath, key, node) for key in unexpected]

    x_message, x_at, props_below = (
        _annotation(chain, spath) if keyword not in _OWN_MESSAGE else (None, None, 0))
    if x_message is not None:
        obj_path = ipath[: len(ipath) - props_below] if props_below else ipath
        if x_at is not None:
            return [Message((*obj_path, x_at), x_message, keyword, relocated=True)]
        got = ""
        if not isinstance(instance, dict | list) and keyword != "required" \
                and not is_sensitive(ipath):
            got = f" (got {render_value(instance, ipath)})"
        return [Message(ipath, x_message + got, keyword)]

    shown = render_value(instance, ipath)
    if keyword == "type":
        types = details.get("types") or [node.get("type")]
        expected = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in types)
        got = _json_type(instance)
        text = f"expected {expected}, got {got}"
        if not isinstance(instance, dict | list) and instance is not None:
            text += f" ({shown})"
        if ipath and ipath[-1] in ("passwordFrom", "clientSecretFrom", "refreshTokenFrom") \
                and isinstance(instance, str):
            text += ("; never put the secret itself in a manifest: reference it with "
                     "secretKeyRef: {name: ..., key: ...}, env: NAME or file: PATH")
        return [Message(ipath, text, keyword)]
    if keyword == "required":
        return [Message(ipath, f"{json.dumps(details.get('property'))} is a required property",
                        keyword)]
    if keyword == "enum":
        options = ", ".join(json.dumps(o) for o in node.get("enum", []))
        return [Message(ipath, f"{shown} is not one of {options}", keyword)]
    if keyword == "const":
        return [Message(ipath, f"{shown} is not {json.dumps(node.get('const'))}", keyword)]
    if keyword in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"):
        word = {"maximum": "greater than the maximum of", "minimum": "less than the minimum of",
                "exclusiveMaximum": "greater than or equal to the maximum of",
                "exclusiveMinimum": "less than or equal to the minimum of"}[keyword]
        return [Message(ipath, f"{shown} is {word} {node.get(keyword)}", keyword)]
    if keyword in ("maxLength", "minLength"):
        limit = node.get(keyword)
        word = "longer than" if keyword == "maxLength" else "shorter than"
        what = "the value" if is_sensitive(ipath) else shown
        if keyword == "minLength" and limit == 1:
            return [Message(ipath, "must not be empty", keyword)]
        return [Message(ipath, f"{what} is {word} {limit} characters", keyword)]
    if keyword == "pattern":
        what = "the value" if is_sensitive(ipath) else shown
        return [Message(ipath, f"{what} does not match the pattern {node.get('pattern')}", keyword)]
    return [Message(ipath, f"{shown} is not valid here ({keyword})", keyword)]


def _unknown_field(path: JsonPath, key: str, node: Any) -> Message:
    if key in LITERAL_SECRET_FIELDS and path and path[-1] == "spec":
        ref = LITERAL_SECRET_FIELDS[key]
        return Message((*path, key), (
            f"literal secrets are not allowed in a manifest: replace {key} with {ref}: "
            f"{{secretKeyRef: {{name: ..., key: ...}}}} (or env: NAME, file: PATH)"),
            "additionalProperties")
    import difflib  # only on this error path: it costs ~3 ms of start-up

    known = sorted(node.get("properties", {})) if isinstance(node, dict) else []
    text = f"unknown field {json.dumps(key)}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        text += f" (did you mean {json.dumps(close[0])}?)"
    elif known:
        text += f"; allowed: {', '.join(known)}"
    return Message((*path, key), text, "additionalProperties")


def drop_shadowed(messages: list[Message]) -> list[Message]:
    """When a value has the wrong type, its other errors (and its children's) are noise;
    so is "does not match the pattern" for a value already reported as empty."""
    typed = {m.path for m in messages if m.keyword == "type"}
    empty = {m.path for m in messages if m.keyword == "minLength"}
    if not typed and not empty:
        return messages
    out = []
    for m in messages:
        if m.keyword != "type" and not m.relocated and any(m.path[: len(t)] == t for t in typed):
            continue
        if m.path in empty and m.keyword in ("pattern", "anyOf", "oneOf"):
            continue
        out.append(m)
    return out
