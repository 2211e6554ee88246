"""Label and field selectors as the Kubernetes API server parses them.

Both the emulator (to filter lists and watches) and the operator's tests use this.  The
grammar is the documented one (``k8s.io/apimachinery/pkg/labels``): comma-separated
requirements, each ``key``, ``!key``, ``key=value``, ``key==value``, ``key!=value``,
``key in (a,b)`` or ``key notin (a,b)``.  A malformed selector is a 400 in the real server,
so :func:`parse_label_selector` raises ``ValueError`` for the emulator to map to 400.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, str]], bool]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside ``( ... )``."""
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Predicate:
    if m := _SET_RE.match(text):
        key, op, raw = m.group(1), m.group(3), m.group(4)
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(text):
        key, op, value = m.group(1), m.group(3), m.group(4)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS_RE.match(text):
        neg, key = m.group(1), m.group(2)
        if neg:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ValueError(f"unable to parse requirement: {text.strip()!r}")


def parse_label_selector(selector: str | None) -> Predicate:
    """A predicate over a labels mapping; an empty selector matches everything."""
    if not selector:
        return lambda _labels: True
    reqs = [_requirement(part) for part in _split(selector)]
    return lambda labels: all(r(labels) for r in reqs)


def _field_matches(obj: Mapping[str, Any], *, path: str, value: str, equal: bool) -> bool:
    return (_field(obj, path) == value) == equal


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part, "")
    return "" if cur is None else str(cur)


def parse_field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Field selectors support ``=``, ``==`` and ``!=`` on dotted paths (e.g. metadata.name)."""
    if not selector:
        return lambda _obj: True
    preds: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in _split(selector):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ValueError(f"invalid field selector: {part.strip()!r}")
        path, op, value = m.group(1), m.group(2), m.group(3)
        preds.append(functools.partial(_field_matches, path=path, value=value,
                                       equal=op != "!="))
    return lambda obj: all(p(obj) for p in preds)
