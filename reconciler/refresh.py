"""How often a relay may be re-verified: the floor and the providers that throttle logins.

Plain data, no pydantic, no I/O: the engine (status warnings) and ``smtpctl validate``
(diagnostics) apply the same rule.  A connection test is a login: ``refreshInterval: 0s``
would log in every second, and Gmail and Microsoft 365 rate-limit or lock accounts that
log in often (the hosts come from ``reconciler.wellknown``).
"""

from __future__ import annotations

from reconciler.wellknown import PROVIDERS

REFRESH_FLOOR = 60.0  # seconds: never re-verify a relay more often than once a minute
THROTTLED_MINIMUM = 900.0  # seconds: Gmail / Microsoft 365 should not be re-verified faster

THROTTLED_HOSTS = frozenset(
    h.lower() for p in PROVIDERS if p.key in ("gmail", "gmail-oauth", "microsoft365")
    for h in (p.host, *p.other_hosts))


def throttles_logins(host: str) -> bool:
    return host.lower().rstrip(".") in THROTTLED_HOSTS


def refresh_warnings(host: str, interval: float, floor: float = REFRESH_FLOOR) -> list[str]:
    """Warning reasons (catalog names) for a ``refreshInterval`` of ``interval`` seconds."""
    out = []
    if interval < floor:
        out.append("RefreshIntervalRaised")
    if throttles_logins(host) and max(interval, floor) < THROTTLED_MINIMUM:
        out.append("FrequentLogins")
    return out
