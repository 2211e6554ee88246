"""Where the operator's connection tests run: ``--probe-workers N|auto``.

The operator is one event loop (one core at most) that also serves the watches, the
status writes and the Events.  A connection test (TLS handshake, SMTP dialogue) is most
of a new resource's CPU, so with ``N > 0`` the tests of password (and unauthenticated)
relays run in ``N`` worker processes (:class:`reconciler.runtimes.probepool.ProbePool`,
the pool ``smtpctl apply --probe-workers`` uses).  OAuth 2.0 relays stay in this process
(their token is refreshed by this process's token manager).  A worker that dies is
replaced at the next test, within the pool's restart budget (at most 4 restarts, or
``N`` if larger, per 60 s; meanwhile tests run here); see the pool's class doc.

The pool is only *where* a test runs: the engine takes its connection-test slot (the
fair ``Limits``: global, per relay host, per namespace) before it calls the probe, so the
workers never run more tests, or another tenant's share, than the slots allow.

``auto`` (the default): one worker per CPU this process may use beyond the first, at
most 4 - the CPUs of its affinity mask, and of its cgroup's CPU quota (a container's
``resources.limits.cpu``).  Under a limit of one CPU (the shipped Deployment) that is 0:
a worker process would only take CPU from the loop.  Workers start at the first test
that can use them, so an operator with nothing to test starts none.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_AUTO_WORKERS = 4
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (None: no limit or not readable).

    cgroup v2 ``cpu.max`` (``"200000 100000"`` = 2 CPUs, ``"max 100000"`` = none), else
    cgroup v1 ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period) if int(period) > 0 else None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process may use: its affinity mask, capped by its cgroup quota
    (a fraction rounds down: 1.5 CPUs is one busy core and some headroom, not two)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)


def auto_probe_workers(cpus: int) -> int:
    """``--probe-workers auto``: one per CPU beyond the first (the loop's), at most 4."""
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def parse_probe_workers(value: str, *, root: Path = CGROUP_ROOT) -> int:
    """``--probe-workers`` (``auto`` or 0..64) as a number of worker processes."""
    if value == "auto":
        return auto_probe_workers(available_cpus(root))
    if value.isdigit() and int(value) <= 64:
        return int(value)
    raise ValueError(f"--probe-workers: expected auto or 0..64, got {value!r}")
