"""`smtpctl demo` end to end, as a new user runs it: the story holds, nothing leaks,
no process is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.canary import CLIENT_SECRET, PASSWORD, assert_no_canary, assert_no_canary_in_tree


def test_demo_story(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    dead = "http://127.0.0.1:9"  # a proxy that is not there: loopback must bypass it
    env = dict(os.environ, SMTPCTL_DEMO_PASSWORD=PASSWORD,
               SMTPCTL_DEMO_CLIENT_SECRET=CLIENT_SECRET, PYTHONWARNINGS="ignore",
               HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, http_proxy=dead)
    env.pop("SMTPCTL_STATE", None)
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "demo", "--workdir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path, start_new_session=True,
                            preexec_fn=lambda: os.umask(0))  # a careless umask, too
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = stdout + stderr
    assert proc.returncode == 0, out
    for line in (
        "ok: billing-relay (password) and oauth-relay (OAuth 2.0) are Ready",
        "ok: billing-relay is the selected relay (one per namespace)",
        "ok: the relay saw no new connection",
        "ok: only billing-relay was re-tested, with the rotated password",
        "ok: generation 2 failed its test (AuthenticationFailed)",
        "ok: generation 1 remains active and selected (last-known-good)",
        "generation 1 remains in use",
        "ok: applications are still handed generation 1",
        "ok: the fix (generation 3) passed its test and is the one in use",
        "ok: backup-relay is Ready and waits as the Standby",
        "ok: billing-relay (priority 0) stays in use",
        "stopped",
        "ok: billing-relay failed its re-verification (ConnectionRefused)",
        "ok: backup-relay took over (Failover); billing-relay released it",
        "ok: applications are now handed the backup relay, and it is healthy",
        "health:      FAILING",
        "ok: billing-relay is back and Ready; it waits out its failbackDelay (FailbackPending)",
        "ok: backup-relay stays in use meanwhile (no flapping)",
        "selection: default: Failback:",
        "ok: billing-relay took selection back (Failback) after being Ready for its "
        "failbackDelay",
        "ok: applications are handed billing-relay again",
        "every step held",
        "Try next:",
    ):
        assert line in out, line
    assert "Traceback" not in out
    assert out.count("selection: default: Failback:") == 1  # recorded on both, shown once
    assert_no_canary(out, where="demo output")
    # the state and manifests hold references only (the secrets dir holds the secrets)
    assert_no_canary_in_tree(work / "state")
    assert_no_canary_in_tree(work / "manifests")
    # the servers were threads of the demo process: nothing of its session survives it
    survivors = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert survivors.stdout.strip() == ""


def test_demo_refuses_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "reconciler", "demo", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not empty" in proc.stdout + proc.stderr
