"""The programs the test suite uses as peers, and the Debian packages that provide them.

One list for both sides:

* ``./dev test`` (and so CI) asks ``python -m tests.support.peers packages`` which Debian
  packages are missing, installs them, then runs ``python -m tests.support.peers check``,
  which exits 1 (naming what is missing) when a peer is still not usable;
* tests call :func:`require` (or a fixture built on it), which **fails** the test when its
  peer is missing.  A missing peer never turns into a skip: a CI machine without Postfix
  must go red, not report the interop tests as "skipped" and stay green.

A developer without root who cannot install the peers deselects their tests explicitly
(``pytest -m "not postfix"``): that is visible in the summary, a skip is not.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]  # Debian packages that provide it
    commands: tuple[str, ...] = ()  # on PATH (or /usr/sbin, /sbin)
    files: tuple[str, ...] = ()
    perl_modules: tuple[str, ...] = ()


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("postfix", ("postfix", "dovecot-core", "ssl-cert"),
         commands=("postfix", "postconf", "dovecot", "doveadm")),
    Peer("swaks", ("swaks", "libnet-ssleay-perl"), commands=("swaks",),
         perl_modules=("Net::SSLeay",)),
    Peer("javamail", ("openjdk-17-jdk-headless", "libjakarta-mail-java"),
         commands=("java", "javac", "keytool"),
         files=("/usr/share/java/jakarta-mail.jar", "/usr/share/java/jakarta-activation.jar")),
    Peer("iproute2", ("iproute2",), commands=("ss",)),
    Peer("setpriv", ("util-linux",), commands=("setpriv",)),
    Peer("shellcheck", ("shellcheck",), commands=("shellcheck",)),  # hack/*.sh lint
)}


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing(name: str) -> list[str]:
    """What of peer ``name`` is not usable here (``[]`` when all of it is)."""
    peer = PEERS[name]
    out = [c for c in peer.commands if which(c) is None]
    out += [f for f in peer.files if not Path(f).exists()]
    out += [f"perl module {m}" for m in peer.perl_modules if not _perl_has(m)]
    return out


@functools.cache
def _perl_has(module: str) -> bool:
    if which("perl") is None:
        return False
    done = subprocess.run(["perl", f"-M{module}", "-e1"], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=30, check=False)
    return done.returncode == 0


def missing_reason(name: str) -> str | None:
    """Why peer ``name`` cannot run here, or ``None``."""
    gone = missing(name)
    if not gone:
        return None
    return (f"test peer {name!r} is not installed ({', '.join(gone)} missing): "
            f"./dev test installs it as root (apt-get install {' '.join(PEERS[name].packages)})")


def require(name: str) -> None:
    """Fail the calling test (never skip) when peer ``name`` is missing."""
    reason = missing_reason(name)
    if reason:
        pytest.fail(reason, pytrace=False)


def fail_unless(reason: str | None) -> None:
    """Fail the calling test with ``reason`` unless it is ``None`` (a peer-specific check)."""
    if reason:
        pytest.fail(reason, pytrace=False)


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=30, check=False)
    return done.returncode == 0 and done.stdout.strip() == "install ok installed"


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "packages":  # Debian packages to install: those of peers not usable yet
        want = [pkg for name in PEERS if missing(name) for pkg in PEERS[name].packages]
        if which("dpkg-query") is not None:
            want = [p for p in want if not _installed(p)] or want
        print(" ".join(dict.fromkeys(want)))
        return 0
    if cmd == "check":
        reasons = [r for r in map(missing_reason, PEERS) if r]
        for r in reasons:
            print(f"dev: {r}", file=sys.stderr)
        return 1 if reasons else 0
    print("usage: python -m tests.support.peers packages|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
