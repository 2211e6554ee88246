"""Go-style durations (``1h``, ``90m``, ``1h30m``, ``45s``): parse and print.

Plain code, no pydantic, no I/O: the schema layer (``smtpctl validate``, which never
imports pydantic) and the resource models share it.  ``reconciler.resources`` re-exports
both functions.  The regular expression is the schema's, written so that Python's ``re``
and ECMA-262 agree (``[0-9]``, ``\\Z``).
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

_DURATION_RE = re.compile(r"^(?:([0-9]+(?:\.[0-9]+)?)(h|ms|m|s|us|µs|ns))+\Z")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@functools.lru_cache(maxsize=256)
def parse_duration(value: str) -> timedelta:
    """Parse a Go duration string (``1h``, ``90m``, ``1h30m``, ``45s``).

    Memoised (``timedelta`` is immutable; an error is raised again each time): a fleet
    repeats a few values, parsed for every resource at every pass."""
    if not _DURATION_RE.match(value):
        raise ValueError(f"{value!r} is not a duration such as 1h, 30m or 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    # The schema's pattern cannot bound the value; an absurd interval means "practically
    # never", not a crash (timedelta overflows past ~2.7 million years).
    return timedelta(seconds=min(seconds, timedelta.max.total_seconds() // 2))


def format_duration(seconds: float) -> str:
    """One way to print a duration, in the syntax of ``parse_duration`` (Go's).

    Under a second in milliseconds (``350ms``, ``4.2ms``); under 10 s with two decimals
    (``1.35s``, ``2s``); under a minute whole seconds (``42s``); then hours and minutes, seconds
    only below 10 minutes (``5m30s``, ``57m``, ``1h6m``, ``26h``).  Every output parses
    back with :func:`parse_duration` (shared by CLI, engine messages and docs)."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 0.9995:
        ms = seconds * 1000
        return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 600:
        m, s = divmod(total, 60)
        return f"{m}m{s}s" if s else f"{m}m"
    total = round(seconds / 60) * 60
    h, rest = divmod(total, 3600)
    m = rest // 60
    if not h:
        return f"{m}m"
    return f"{h}h{m}m" if m else f"{h}h"
