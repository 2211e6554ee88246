"""When the next test is due: jittered refresh and capped exponential backoff.

Jitter is deterministic per resource (a hash of its identity), not random: 10,000 relays
applied in the same second spread their re-verification over +-10% of the interval, and a
test can compute exactly when a given resource is due.
"""

from __future__ import annotations

import hashlib

JITTER = 0.10  # +-10%
BACKOFF_BASE = 5.0  # seconds after the first transient failure
BACKOFF_CAP = 300.0  # never wait longer than 5 minutes to retry a transient failure


def jitter_factor(key: str, spread: float = JITTER) -> float:
    """A stable factor in [1 - spread, 1 + spread] derived from ``key``."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return 1.0 + spread * (2.0 * u - 1.0)


def refresh_delay(interval: float, key: str) -> float:
    """The jittered re-verification delay for a resource (``refreshInterval``)."""
    return max(1.0, interval * jitter_factor(key))


def backoff_delay(failures: int, key: str, *, base: float = BACKOFF_BASE,
                  cap: float = BACKOFF_CAP) -> float:
    """Delay after ``failures`` consecutive transient failures (1 -> base, doubling, capped)."""
    n = max(1, failures)
    raw = min(cap, base * 2.0 ** min(n - 1, 30))
    return min(cap, raw * jitter_factor(key + "#backoff"))


ERROR_BASE = 1.0  # seconds after the first store/API error of an item
ERROR_CAP = 300.0


class ErrorBackoff:
    """Per-item exponential backoff for errors *around* a pass (a store or API error, a
    crash), as controller-runtime's per-item rate limiter: 1 s, 2 s, 4 s ... capped at
    300 s, jittered per item, reset by the item's next successful pass.

    A verdict (a failed connection test, a missing secret) is not such an error: the
    engine already schedules those with :func:`backoff_delay`/:func:`refresh_delay`.  One
    item failing again and again never delays the others, and an item that recovers is
    retried on its normal schedule at once.
    """

    def __init__(self, *, base: float = ERROR_BASE, cap: float = ERROR_CAP) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}

    def failure(self, key: str) -> float:
        """Record one more error of ``key``; the delay before retrying it."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        return backoff_delay(n, key + "#error", base=self.base, cap=self.cap)

    def success(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)
