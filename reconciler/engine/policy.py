"""Day-2 policy the engine applies to every relay: the re-verification floor, login
throttling, certificate expiry.

* **Floor on ``refreshInterval``**: a connection test is a login.  ``refreshInterval: 0s``
  would log in every second (the engine requeues at once); below the world's
  ``refresh_floor`` (:data:`REFRESH_FLOOR`, 1 minute, unless a runtime was started with
  ``--min-refresh-interval``) the floor is used and the status carries the warning
  ``RefreshIntervalRaised``.
* **Providers that throttle logins** (Gmail, Microsoft 365 - the hosts of
  ``reconciler.wellknown``): below :data:`THROTTLED_MINIMUM` the status carries
  ``FrequentLogins``; these providers lock or rate-limit accounts that log in too often.
* **Certificate expiry**: the relay's certificate ``notAfter`` is recorded in
  ``status.active.tls.certificateNotAfter``; within :data:`CERT_WARNING_DAYS` the status
  carries ``CertificateExpiringSoon`` and a Warning Event is recorded.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.resources import ExternalSmtpSpec
from reconciler.wellknown import PROVIDERS

REFRESH_FLOOR = 60.0  # seconds: never re-verify a relay more often than once a minute
THROTTLED_MINIMUM = 900.0  # seconds: Gmail / Microsoft 365 should not be re-verified faster
CERT_WARNING_DAYS = 21.0

THROTTLED_HOSTS = frozenset(
    h.lower() for p in PROVIDERS if p.key in ("gmail", "gmail-oauth", "microsoft365")
    for h in (p.host, *p.other_hosts))


def refresh_seconds(spec: ExternalSmtpSpec, floor: float = REFRESH_FLOOR) -> float:
    """The re-verification interval the engine uses (``refreshInterval``, floored)."""
    return max(spec.refresh_seconds, floor)


def config_warnings(spec: ExternalSmtpSpec, floor: float = REFRESH_FLOOR) -> list[str]:
    """Warning reasons about the configuration itself (not about a test)."""
    out = []
    if spec.refresh_seconds < floor:
        out.append("RefreshIntervalRaised")
    if spec.host.lower().rstrip(".") in THROTTLED_HOSTS and \
            refresh_seconds(spec, floor) < THROTTLED_MINIMUM:
        out.append("FrequentLogins")
    return out


def epoch(rfc3339: str) -> float | None:
    try:
        return datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def certificate_expiring(not_after: str | None, now: float) -> bool:
    """Whether a certificate expiring at ``not_after`` (RFC 3339) needs a warning now."""
    if not not_after:
        return False
    at = epoch(not_after)
    return at is not None and at - now < CERT_WARNING_DAYS * 86400
