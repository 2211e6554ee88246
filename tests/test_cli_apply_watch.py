"""Watch mode (`apply --watch` / `reconcile --watch`) and the concurrency limits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from reconciler.engine.world import Limits
from reconciler.runtimes.local import build_world, watch
from reconciler.stores.local import LocalStore
from tests.support import canary
from tests.support.engine_env import Env, cond, e2e_fixture  # noqa: F401
from tests.support.terminal import smtpctl


async def _until(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_watch_reapplies_changed_files_and_reverifies(e2e: Env) -> None:
    doc = e2e.smtp("w", selected=True, refreshInterval="1s")
    path = e2e.write("w.yaml", doc)
    store = LocalStore(e2e.state)
    world = build_world(store, limits=Limits(4, 2), refresh_floor=0.5)
    stop = asyncio.Event()
    errors: list[str] = []
    task = asyncio.create_task(watch(store, world, [str(path)], poll=0.05, max_sleep=0.5,
                                     stop=stop, on_error=errors.append))
    try:
        await _until(lambda: e2e.relay.connections >= 1)
        # re-verification on refreshInterval (1s +-10%) with no change at all
        await _until(lambda: e2e.relay.connections >= 3)
        # a changed file is re-applied: generation 2
        doc["spec"]["refreshInterval"] = "1h"
        path.write_text(yaml.safe_dump(doc))
        os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        await _until(lambda: (store.get_sync(_ref("w")) or _never()).generation == 2)
        # a broken file is reported, the store keeps the last good input
        path.write_text("kind: [\n")
        os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
        await _until(lambda: bool(errors))
        assert "w.yaml" in errors[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        store.close()
    st = e2e.status("w")
    assert cond(st, "Ready")["status"] == "True" and st["generation"] == 2


def _ref(name: str):  # type: ignore[no-untyped-def]
    from reconciler.stores.base import ObjectRef
    return ObjectRef("ExternalSmtp", "default", name)


def _never() -> NoReturn:
    raise AssertionError("missing")


async def test_limits_bound_concurrent_tests_per_host() -> None:
    limits = Limits(concurrency=6, per_host=2)
    inflight: dict[str, int] = {}
    peak: dict[str, int] = {}
    total = {"now": 0, "peak": 0}

    async def one(host: str) -> None:
        async with limits.slot(host):
            inflight[host] = inflight.get(host, 0) + 1
            total["now"] += 1
            peak[host] = max(peak.get(host, 0), inflight[host])
            total["peak"] = max(total["peak"], total["now"])
            await asyncio.sleep(0.01)
            inflight[host] -= 1
            total["now"] -= 1

    await asyncio.gather(*(one(f"h{i % 5}") for i in range(60)))
    assert max(peak.values()) == 2 and total["peak"] <= 6
    assert total["peak"] > 2  # hosts did run in parallel
    with pytest.raises(ValueError):
        Limits(0, 1)


def test_concurrent_applies_do_not_interleave(e2e: Env) -> None:
    docs = [e2e.smtp(f"c{i}") for i in range(20)]
    path = e2e.write("c.yaml", *docs)
    env = dict(os.environ, SMTP_PW=canary.PASSWORD, PYTHONWARNINGS="ignore")
    cmd = smtpctl("apply", "-f", str(path), "--state",
                  str(e2e.state), "--lock-timeout", "30")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              text=True) for _ in range(3)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        outs.append(out)
        assert p.returncode == 0, out
        canary.assert_no_canary(out, where="apply output")
    # one of them tested everything, the others found nothing to do: never twice
    assert e2e.relay.connections == 20
    assert sum("20 created; 20 tested" in o for o in outs) == 1
    assert sum("20 unchanged; 0 tested" in o for o in outs) == 2


def test_reconcile_without_state_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(smtpctl("reconcile", "--state", str(tmp_path / "none")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "(from --state)" in proc.stderr  # a mistyped --state is named as such


def test_apply_watch_cli_reverifies_and_stops_on_ctrl_c(e2e: Env) -> None:
    import signal

    path = e2e.write("w.yaml", e2e.smtp("w", refreshInterval="1s"))
    env = dict(os.environ, SMTP_PW=canary.PASSWORD, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(smtpctl("apply", "--watch", "-f",
                                    str(path), "--state", str(e2e.state),
                                    "--min-refresh-interval", "1s"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while e2e.relay.connections < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert e2e.relay.connections >= 3  # first test + re-verifications every ~1s
        # the watch holds the lock only during its passes: another apply gets in
        code, out = e2e.cli("apply", "-f", str(e2e.write("x.yaml", e2e.smtp("x"))),
                            "--lock-timeout", "20")
        assert code == 0, out
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "watching for changes" in out and "Traceback" not in out
    canary.assert_no_canary(out, where="watch output")
    # the lock was released on exit: another apply runs at once
    code, _ = e2e.cli("apply", "-f", str(path), "--lock-timeout", "0")
    assert code == 0


def test_reconcile_watch_cli_reverifies(e2e: Env) -> None:
    import signal

    path = e2e.write("r.yaml", e2e.smtp("r", refreshInterval="1s"))
    assert e2e.cli("apply", "-f", str(path), "--min-refresh-interval", "1s")[0] == 0
    n = e2e.relay.connections
    env = dict(os.environ, SMTP_PW=canary.PASSWORD, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(smtpctl("reconcile", "--watch",
                                    "--state", str(e2e.state), "--min-refresh-interval", "1s"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while e2e.relay.connections < n + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert e2e.relay.connections >= n + 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in out, out
    canary.assert_no_canary(out, where="reconcile --watch output")


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "


def test_apply_watch_lines_have_timestamps_and_show_failovers(e2e: Env) -> None:
    import re
    import signal

    e2e.relay.users["other@example.test"] = canary.PASSWORD
    a = e2e.smtp("a", selected=True, refreshInterval="1s")
    assert e2e.cli("apply", "-f", str(e2e.write("a.yaml", a)),  # a is the incumbent
                   "--min-refresh-interval", "1s")[0] == 0
    path = e2e.write("w.yaml", a, e2e.smtp("b", selected=True, user="other@example.test"))
    env = dict(os.environ, SMTP_PW=canary.PASSWORD, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(smtpctl("apply", "--watch", "-f",
                                    str(path), "--state", str(e2e.state),
                                    "--min-refresh-interval", "1s"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _selected(e2e, "b"):
            if "b" in _names(e2e) and _ready(e2e, "b"):
                e2e.relay.users.pop("app@example.test", None)  # a's re-test now fails
            time.sleep(0.05)
        assert _selected(e2e, "b"), "no failover within 30s"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    canary.assert_no_canary(out, where="watch output")
    assert re.search(rf"^{STAMP}watching for changes", out, re.M), out
    assert re.search(rf"^{STAMP}failed +ExternalSmtp/default/a: Ready=False "
                     r"\(AuthenticationFailed\): ", out, re.M), out
    assert re.search(rf"^{STAMP}selection ExternalSmtp/default/b: Failover: ", out, re.M), out


def _names(e2e: Env) -> set[str]:
    if not (e2e.state / "state.db").exists():
        return set()
    with LocalStore(e2e.state, create=False) as store:
        return {o.ref.name for o in store.list_sync()}


def _ready(e2e: Env, name: str) -> bool:
    return cond(e2e.status(name), "Ready").get("status") == "True"


def _selected(e2e: Env, name: str) -> bool:
    return name in _names(e2e) and e2e.status(name).get("selected") is True
