"""Crash consistency: kill -9 an `smtpctl apply` at random instants, then check the store.

After every kill: the store opens, ``PRAGMA integrity_check`` is ok, no resource claims
``Ready=True`` without a passed test of the generation the condition names, at most one
relay is selected, and the store file holds no canary.  A last uninterrupted apply then
converges.  The loop is bounded in count and time; the slow variant runs longer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reconciler.stores.local import LocalStore
from tests.support import canary
from tests.support.engine_env import USER, Env, cond, e2e_fixture  # noqa: F401


def _manifests(e2e: Env, n: int, broken: set[int]) -> Path:
    docs = [e2e.smtp(f"r{i:03d}", selected=i % 7 == 0,
                     user="nobody@example.test" if i in broken else USER) for i in range(n)]
    path = e2e.root / "fleet.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def _check_store(state: Path) -> None:
    if not (state / "state.db").exists():
        return  # killed before the store was created: nothing to be inconsistent
    with LocalStore(state, create=False) as store:
        assert store.integrity_check() == "ok"
        selected = 0
        for obj in store.list_sync("ExternalSmtp"):
            selected += bool(obj.status.get("selected"))
            ready = cond(obj.status, "Ready")
            if ready.get("status") != "True":
                continue
            gen = ready["observedGeneration"]
            memo = obj.memo
            # Ready for generation `gen` needs a passed test of exactly its settings and
            # secrets (the same digest; a generation that only changed untested fields
            # inherits the test of the identical settings).
            assert memo is not None and memo.passed and memo.generation == gen, obj.ref
            passed = [t for t in store.tests_sync(obj.ref, limit=100)
                      if t["passed"] and t["digest"] == memo.digest]
            assert passed, f"{obj.ref} claims Ready for generation {gen} without a passed test"
            assert obj.status.get("activeGeneration") == gen
        assert selected <= 1
    canary.assert_no_canary_in_tree(state)


def _run(e2e: Env, path: Path, kill_after: float | None) -> int | None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "-f", str(path), "--state", str(e2e.state),
         "--concurrency", "8", "--per-host", "8", "--lock-timeout", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        if kill_after is None:
            return proc.wait(timeout=60)
        try:
            return proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _crash_loop(e2e: Env, iterations: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + 60 * max(1, iterations // 8)
    # How long one whole apply takes on this machine right now (it is shared and noisy):
    # the kill instants are spread over that span, so they land before, during and
    # after the store writes whatever the load.
    t0 = time.monotonic()
    _run(e2e, _manifests(e2e, n, set(range(0, n, 5))), kill_after=None)
    span = max(0.5, time.monotonic() - t0)
    _check_store(e2e.state)
    killed = 0
    for i in range(iterations):
        if time.monotonic() > deadline:
            break
        broken = {j for j in range(n) if rng.random() < 0.2}
        path = _manifests(e2e, n, broken)
        started = time.monotonic()
        if _run(e2e, path, kill_after=rng.uniform(0.1, 1.1) * span) is None:
            killed += 1
        else:
            # It finished before the kill: the first apply was slowed by the machine's load
            # (it is shared). Aim the next kills within what an apply takes now.
            span = max(0.3, time.monotonic() - started)
        _check_store(e2e.state)
        if i % 3 == 2:  # rotate the password now and then (same generation, new digest)
            new = canary.canary(f"rot{i}")
            e2e.relay.users[USER] = new
            os.environ["SMTP_PW"] = new
    assert killed >= 1, "no apply was interrupted: the loop tested nothing"
    path = _manifests(e2e, n, set())
    assert _run(e2e, path, kill_after=None) == 0
    _check_store(e2e.state)
    with LocalStore(e2e.state, create=False) as store:
        objs = store.list_sync("ExternalSmtp")
        assert len(objs) == n
        assert all(cond(o.status, "Ready")["status"] == "True" for o in objs)
        assert sum(bool(o.status.get("selected")) for o in objs) == 1


def test_kill_9_during_apply_leaves_a_consistent_store(e2e: Env,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PW", canary.PASSWORD)  # restored after the test
    _crash_loop(e2e, iterations=6, n=40, seed=1)


@pytest.mark.slow
def test_kill_9_many_times(e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PW", canary.PASSWORD)
    _crash_loop(e2e, iterations=30, n=120, seed=2)
