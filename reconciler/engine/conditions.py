"""kstatus conditions: set/remove with ``lastTransitionTime`` semantics.

``lastTransitionTime`` changes only when a condition's *status* changes (a new reason or
message with the same status keeps the old time), exactly like ``meta.SetStatusCondition``
in apimachinery.  Every condition carries the ``observedGeneration`` it was computed for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from reconciler.probe.redact import MAX_MESSAGE, cap, sanitize
from reconciler.status import Condition, ConditionStatus

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
SELECTED = "Selected"


def rfc3339(epoch: float) -> str:
    """An RFC 3339 UTC time with second precision, as Kubernetes writes them.

    Memoised by the whole second (the text has no fraction): passes share a clock
    second, so nearly every call is a lookup (``strftime`` was ~5 % of a large apply's
    CPU; memoised by the exact float, every pass still missed once or twice)."""
    second = math.floor(epoch)
    if round((epoch - second) * 1e6) >= 1_000_000:  # datetime rounds to microseconds
        second += 1
    return _second(second)


@functools.lru_cache(maxsize=256)
def _second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Sequence[Mapping[str, Any]], ctype: str) -> dict[str, Any] | None:
    """The condition ``ctype`` in a list of conditions (untyped; see :func:`of`)."""
    for c in conditions:
        if c.get("type") == ctype:
            return cast(dict[str, Any], c)
    return None


def of(status: Mapping[str, Any], ctype: str) -> Condition | None:
    """The condition ``ctype`` of a status, typed, or None."""
    return cast(Condition | None, find(status.get("conditions") or [], ctype))


def attr(status: Mapping[str, Any], ctype: str, key: str) -> Any:
    """One field (``reason``, ``status``, ...) of the condition ``ctype``, or None."""
    c = of(status, ctype)
    return c.get(key) if c is not None else None


def is_true(status: Mapping[str, Any], ctype: str) -> bool:
    c = of(status, ctype)
    return c is not None and c.get("status") == "True"


def one_line(message: str) -> str:
    """``sanitize(message, one_line=True)``, without its four regular-expression passes
    for a message that they leave as it is (nearly all: the engine's own words): printable
    (so no line break, tab, control or invisible formatting character - every character
    ``sanitize`` rewrites is one ``str.isprintable`` refuses), no run of spaces, no space
    at either end.  ``tests/test_engine_pass_costs.py`` compares the two on any text."""
    if message.isprintable() and "  " not in message and message[:1] != " " \
            and message[-1:] != " ":
        return message
    return sanitize(message, one_line=True)


_ORDER = {READY: 0, STALLED: 1, RECONCILING: 2, SELECTED: 3}


def _order(c: Mapping[str, Any]) -> int:
    return _ORDER.get(str(c.get("type")), 9)


def _new(conditions: Sequence[Mapping[str, Any]], ctype: str, status: ConditionStatus,
         reason: str, message: str, generation: int, now: float) -> Condition:
    message = cap(one_line(message), MAX_MESSAGE)
    old = find(conditions, ctype)
    ltt = str(old["lastTransitionTime"]) if old and old.get("status") == status else rfc3339(now)
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": ltt, "observedGeneration": generation}


def set_condition(
    conditions: Sequence[Mapping[str, Any]], ctype: str, status: ConditionStatus, reason: str,
    message: str, *, generation: int, now: float,
) -> list[Condition]:
    """A new list with ``ctype`` set; keeps ``lastTransitionTime`` unless status changed.

    The message is capped at ``MAX_MESSAGE`` (4,096) characters, well under the CRD's
    32,768: above it a status write fails (422) and would be retried for ever."""
    new = _new(conditions, ctype, status, reason, message, generation, now)
    out = [cast(Condition, c) for c in conditions if c.get("type") != ctype]
    out.append(new)
    out.sort(key=_order)
    return out


# set_conditions: (status, reason, message) sets a condition, None removes it.
Change = tuple[ConditionStatus, str, str] | None


def set_conditions(conditions: Sequence[Mapping[str, Any]], changes: Mapping[str, Change],
                   *, generation: int, now: float) -> list[Condition]:
    """Several :func:`set_condition` / :func:`remove_condition` calls in one: one new list
    (and one sort) for a verdict's conditions instead of one per condition.  The result
    is the one of applying the changes one after another, in any order (each names
    another type; ``tests/test_engine_conditions_once.py`` checks the equality)."""
    out = [cast(Condition, c) for c in conditions if c.get("type") not in changes]
    n = len(out)
    for ctype, change in changes.items():
        if change is not None:
            out.append(_new(conditions, ctype, *change, generation, now))
    if len(out) > n:  # as set_condition does; a removal alone keeps the order
        out.sort(key=_order)
    return out


def remove_condition(conditions: Sequence[Mapping[str, Any]], ctype: str) -> list[Condition]:
    return [cast(Condition, c) for c in conditions if c.get("type") != ctype]
