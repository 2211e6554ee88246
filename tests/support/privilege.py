"""Run a test without the privilege to ignore file permissions, even when the suite is root.

CI runs ``./dev test`` as root, and root reads and writes every file whatever its mode, so a
test of "the secret file is unreadable" or "the directory is read-only" cannot observe the
error it is about.  Such a test starts with::

    if privilege.rerun_unprivileged(request):
        return  # it ran (and passed) in an unprivileged subprocess

When this process may bypass file permissions (``CAP_DAC_OVERRIDE`` or
``CAP_DAC_READ_SEARCH`` in its effective set: root, or a user granted them), the test is run
again, alone, in a ``pytest`` subprocess started through ``setpriv`` with **every
capability dropped** (bounding, inheritable and ambient sets, ``no_new_privs``); its result
becomes this test's result.  In the subprocess the function returns ``False`` and the test
body runs.

Why drop capabilities instead of switching to another uid: the interpreter and the
virtualenv of this machine live under ``/root`` (mode 0700), which another uid cannot
traverse.  For the permission checks these tests are about, a process without
capabilities is exactly an unprivileged user: the kernel applies the owner's mode bits to
the files the test creates (``0o000`` is unreadable, ``0o500`` is not writable).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import peers

_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_INNER = "SMTPCTL_TEST_UNPRIVILEGED"


def effective_capabilities() -> int:
    """This process's effective capability set (``CapEff`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise RuntimeError("/proc/self/status has no CapEff line")


def bypasses_file_permissions() -> bool:
    caps = effective_capabilities()
    return bool(caps & (1 << _CAP_DAC_OVERRIDE | 1 << _CAP_DAC_READ_SEARCH))


def rerun_unprivileged(request: pytest.FixtureRequest, *, timeout: float = 120.0) -> bool:
    """``True`` when the calling test was run (and passed) in an unprivileged subprocess;
    ``False`` when this process is unprivileged and the caller should run its body.
    Fails the test when the subprocess fails, or when dropping the privilege did not work."""
    if not bypasses_file_permissions():
        return False
    if os.environ.get(_INNER):
        pytest.fail("setpriv ran this test with its capabilities still in effect",
                    pytrace=False)
    peers.require("setpriv")
    root = request.config.rootpath
    with tempfile.TemporaryDirectory(prefix="smtpctl-unpriv-") as base:
        argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
                "--no-new-privs", "--", sys.executable, "-m", "pytest", "-q", "-p",
                "no:cacheprovider", "-p", "no:xdist", "--basetemp", str(Path(base) / "t"),
                request.node.nodeid]
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                              env={**os.environ, _INNER: "1"})
    if done.returncode != 0:
        pytest.fail(f"{request.node.nodeid} failed without privileges "
                    f"(exit {done.returncode}):\n{done.stdout}{done.stderr}", pytrace=False)
    if not re.search(r"^1 passed\b", done.stdout, re.M):
        pytest.fail(f"the unprivileged run did not pass exactly this test:\n{done.stdout}",
                    pytrace=False)
    return True
