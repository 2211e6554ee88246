"""The operator's connection tests in probe worker processes (``--probe-workers``).

End to end: the real ``smtpctl operator`` with one worker against a real STARTTLS relay:
passed and failed tests run in the worker (counted by the operator's metrics), verdicts
and the redacted transcript of a failure are what the in-process probe gives, the
worker is a child of the operator that ends with it, and a worker killed with
``kill -9`` costs nothing but the worker: the next test starts a new one and runs in it.
The ``auto`` default follows the CPUs the process may use (cgroup quota included).
"""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.runtimes.operator.probing import (
    auto_probe_workers,
    available_cpus,
    cgroup_cpu_limit,
    parse_probe_workers,
)
from tests.support import canary
from tests.support.kube_operator import (
    Cluster,
    OperatorProcess,
    cluster,
    condition,
    relay_cluster,
    relay_spec,
    wait_for,
)

USER = "user@example.test"
NS = "mail"


# --- auto: the CPUs this process may use ---------------------------------------------------


def test_cgroup_v2_quota_in_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_in_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_auto_follows_the_cpu_limit(tmp_path: Path) -> None:
    """The shipped Deployment's limit of one CPU gives no worker (it would only take CPU
    from the loop); a fraction rounds down; without a limit, the affinity mask counts."""
    mask = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == mask  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cpus(tmp_path) == 1
    assert parse_probe_workers("auto", root=tmp_path) == 0
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU is still one loop
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert available_cpus(tmp_path) == min(mask, 2)
    assert [auto_probe_workers(n) for n in (1, 2, 3, 5, 16)] == [0, 1, 2, 4, 4]
    assert parse_probe_workers("3", root=tmp_path) == 3
    for bad in ("-1", "65", "two", ""):
        with pytest.raises(ValueError, match="--probe-workers"):
            parse_probe_workers(bad, root=tmp_path)


def test_a_bad_probe_workers_value_is_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "reconciler", "operator", "--kubeconfig",
                           str(tmp_path / "none"), "--probe-workers", "many"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--probe-workers" in proc.stdout + proc.stderr


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[Cluster, RelayServer]]:
    with relay_cluster(tmp_path, NS) as (c, relay):
        c.put_secret(NS, "wrong-password", {"password": canary.canary("wrong")})
        yield c, relay


def _metric(op: OperatorProcess, name: str) -> float:
    """A metric's value (-1: not served yet, or no such sample)."""
    url = next((f"http://127.0.0.1:{r['port']}/metrics" for r in op.logs()
                if r.get("msg") == "listening" and "/metrics" in (r.get("paths") or [])), "")
    if not url:
        return -1.0
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def _ready(c: Cluster, name: str) -> dict[str, object]:
    return condition(c.smtp(NS, name), "Ready")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_tests_run_in_the_worker_and_a_killed_worker_costs_only_itself(
        env: tuple[Cluster, RelayServer]) -> None:
    c, relay = env
    c.create_smtp(NS, "good", relay_spec(relay.port))
    c.create_smtp(NS, "bad", relay_spec(relay.port, selected=False,
                                        password_secret="wrong-password"))
    with OperatorProcess(c, "op", "--namespace", NS, "--metrics-port", "0",
                         "--probe-workers", "1") as op:
        assert op.proc is not None
        wait_for("good Ready", lambda: _ready(c, "good").get("status") == "True")
        wait_for("bad failed", lambda: _ready(c, "bad").get("status") == "False")
        bad = _ready(c, "bad")
        assert bad["reason"] == "AuthenticationFailed", bad
        # Both tests ran in the worker (the metric is refreshed every second).
        wait_for("worker tests counted",
                 lambda: _metric(op, "smtpctl_probe_worker_tests_total") == 2.0)
        assert _metric(op, "smtpctl_probe_workers") == 1.0
        assert len(relay.auth_attempts) == 2
        workers = [p for p in _children(op.proc.pid) if "worker_main" in _cmdline(p)]
        assert len(workers) == 1, [_cmdline(p) for p in _children(op.proc.pid)]
        # The worker's environment holds no secret (they travel per test over its pipe).
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes()
        canary.assert_no_canary(environ, where="probe worker environment")
        assert b"SMTPCTL_VERSION_KEY" not in environ

        # kill -9 the worker (an OOM kill): the operator goes on, and the next test
        # starts a new worker and runs in it (failed before: it ran in the operator's
        # loop, and every later one too, until the pod restarted).
        assert _metric(op, "smtpctl_probe_worker_restarts_total") == 0.0
        os.kill(workers[0], signal.SIGKILL)
        wait_for("no worker", lambda: _metric(op, "smtpctl_probe_workers") == 0.0)
        c.create_smtp(NS, "third", relay_spec(relay.port, selected=False))
        wait_for("third Ready", lambda: _ready(c, "third").get("status") == "True")
        assert len(relay.auth_attempts) == 3
        wait_for("third tested in a new worker",
                 lambda: _metric(op, "smtpctl_probe_worker_tests_total") == 3.0)
        assert _metric(op, "smtpctl_probe_worker_restarts_total") == 1.0
        assert _metric(op, "smtpctl_probe_worker_unavailable_total") == 0.0
        assert _metric(op, "smtpctl_probe_workers") == 1.0
        new = [p for p in _children(op.proc.pid) if "worker_main" in _cmdline(p)]
        assert len(new) == 1 and new != workers
        workers += new
        assert op.exited() is None
    # Stopped with the operator: no worker outlives it.
    assert not any("worker_main" in _cmdline(p) for p in workers)


def test_no_worker_is_started_while_nothing_is_tested(tmp_path: Path) -> None:
    """Workers start at the first test that can use them: an operator with no resource
    (or only OAuth2 relays) starts none."""
    with cluster(tmp_path) as c, OperatorProcess(c, "op", "--namespace", NS,
                                                 "--metrics-port", "0",
                                                 "--probe-workers", "2") as op:
        assert op.proc is not None
        wait_for("metrics", lambda: _metric(op, "smtpctl_probe_workers") == 0.0)
        assert not [p for p in _children(op.proc.pid) if "worker_main" in _cmdline(p)]
