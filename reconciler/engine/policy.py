"""Day-2 policy the engine applies to every relay: the re-verification floor, login
throttling, certificate expiry.

* **Floor on ``refreshInterval``**: a connection test is a login.  ``refreshInterval: 0s``
  would log in every second (the engine requeues at once); below the world's
  ``refresh_floor`` (:data:`REFRESH_FLOOR`, 1 minute, unless a runtime was started with
  ``--min-refresh-interval``) the floor is used and the status carries the warning
  ``RefreshIntervalRaised``.
* **Providers that throttle logins** (Gmail, Microsoft 365 - ``reconciler.refresh``,
  shared with ``smtpctl validate``): below 15 minutes the status carries
  ``FrequentLogins``; these providers lock or rate-limit accounts that log in too often.
* **Certificate expiry**: the relay's certificate ``notAfter`` is recorded in
  ``status.active.tls.certificateNotAfter``; within :data:`CERT_WARNING_DAYS` the status
  carries ``CertificateExpiringSoon`` and a Warning Event is recorded.
"""

from __future__ import annotations

import functools
from datetime import datetime

from reconciler.refresh import REFRESH_FLOOR, refresh_warnings
from reconciler.resources import ExternalSmtpSpec

CERT_WARNING_DAYS = 21.0


def refresh_seconds(spec: ExternalSmtpSpec, floor: float = REFRESH_FLOOR) -> float:
    """The re-verification interval the engine uses (``refreshInterval``, floored)."""
    return max(spec.refresh_seconds, floor)


def config_warnings(spec: ExternalSmtpSpec, floor: float = REFRESH_FLOOR) -> list[str]:
    """Warning reasons about the configuration itself (not about a test)."""
    return refresh_warnings(spec.host, spec.refresh_seconds, floor)


_DIGITS = frozenset("0123456789")
_SHAPE = "dddd-dd-ddTdd:dd:ddZ"  # what rfc3339() (and Kubernetes) writes: d is a digit


@functools.lru_cache(maxsize=256)
def epoch(rfc3339: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, None if it is not one; memoised (a fleet
    behind one relay parses the same certificate ``notAfter`` at every pass).

    The form this code writes (``2026-12-02T02:26:52Z``) is read by ``datetime.fromisoformat``
    (in C, no import); any other text goes to ``datetime.strptime`` as before, which accepts
    more (offsets, one-digit fields) and whose first use imports and compiles ``_strptime``
    (~1.5 ms of a process's start; the first pass of every apply and operator met it).  Both
    give the same answer on the common form (``tests/test_engine_pass_costs.py``)."""
    if len(rfc3339) == len(_SHAPE) and all(
            c in _DIGITS if want == "d" else c == want
            for c, want in zip(rfc3339, _SHAPE, strict=True)):
        try:
            return datetime.fromisoformat(rfc3339).timestamp()  # C parser; "Z" is UTC
        except ValueError:  # a field out of range (month 13, 25:00, second 60 ...)
            return None
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
