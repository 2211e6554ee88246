"""The interop peer itself: private, loopback-only, and cleaned up even after a crash."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import peers, postfix
from tests.support.postfix import PostfixPeer, postfix_peer

__all__ = ["postfix_peer"]  # the session fixture, imported for pytest
pytestmark = pytest.mark.postfix

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_is_private(postfix_peer: PostfixPeer) -> None:
    """Nothing of the machine's Postfix is used: config, queue and data are ours."""
    out = subprocess.run(
        ["postconf", "-c", str(postfix_peer.root / "etc"), "-h", "config_directory",
         "queue_directory", "data_directory", "maillog_file", "default_transport",
         "relay_transport"],
        capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
    for path in out[:4]:
        assert path.startswith(str(postfix_peer.root)), path
    assert all(line.startswith("error:") for line in out[4:6])


def test_listens_on_loopback_only(postfix_peer: PostfixPeer) -> None:
    peers.require("iproute2")
    for name, port in postfix_peer.ports.items():
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        local = {line.split()[3] for line in out.splitlines() if line.strip()}
        assert local == {f"127.0.0.1:{port}"}, (name, local)


def test_instance_of_a_killed_process_is_swept(tmp_path: Path) -> None:
    """A pytest killed mid-session leaves daemons behind; the next start stops them."""
    peers.fail_unless(postfix.skip_reason())
    script = ("import time\nfrom tests.support.postfix import start_peer\n"
              "p = start_peer()\nprint(p.root, flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the peer did not start within 60 s"
        root = Path(proc.stdout.readline().decode().strip())
        pids = [postfix._read_pid(root / "queue" / "pid" / "master.pid"),
                postfix._read_pid(root / "dovecot" / "run" / "master.pid")]
        assert all(p is not None and postfix._alive(p) for p in pids), _states(pids)
    finally:
        proc.kill()  # no teardown runs: as when CI kills a hung job
        proc.wait(timeout=30)
    assert all(p is not None and postfix._alive(p) for p in pids), _states(pids)  # orphans
    postfix.sweep_stale_instances()  # (a concurrent worker's start may sweep it first)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(postfix._alive(p) for p in pids if p):
        time.sleep(0.1)
    assert not any(postfix._alive(p) for p in pids if p)
    assert not root.exists()


def _states(pids: list[int | None]) -> str:
    """For a failure message: each pid and its /proc state (R, S, Z, gone)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        out.append(f"{pid}:{postfix._comm(pid) if pid else None}:{state}")
    return " ".join(out)


def test_sweep_leaves_live_instances_alone(postfix_peer: PostfixPeer) -> None:
    postfix.sweep_stale_instances()
    assert postfix_peer.root.exists()
    assert postfix._listening(postfix_peer.starttls_port)
