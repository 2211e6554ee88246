"""The probe against hostile peers (issue 9): the implicit-TLS fallback as a downgrade an
attacker can trigger, and warnings that must describe what really happened.

Real aiosmtpd relays on loopback; the "TLS port" is either closed or a listener that
accepts and resets (what an attacker on the path does to force the fallback).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import run_probe
from tests.support import canary
from tests.support.smtp_servers import (  # noqa: F401
    USER,
    make_spec,
    password_creds,
    relay_fixture,
    shared_ca_fixture,
)

Relay = Callable[..., RelayServer]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def resetting_port() -> Iterator[int]:
    """A listener that accepts every connection and resets it at once (RST, no FIN)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        srv.close()


@pytest.mark.parametrize("tls_port", ["closed", "reset"])
async def test_fallback_never_carries_credentials_in_clear(
        relay: Relay, resetting_port: int, tls_port: str) -> None:
    """Issue 9 (medium): implicit TLS + `fallback: true` + `allowPlaintextAuth: true` and a
    reset on the TLS port led to AUTH PLAIN in clear on the plain port.  The fallback is a
    downgrade anyone on the path can trigger, so it never carries credentials in clear."""
    server = relay(mode="plain", users={USER: canary.PASSWORD})
    implicit = _closed_port() if tls_port == "closed" else resetting_port
    spec = make_spec(server.port, mode="implicit", implicit_port=implicit, fallback=True,
                     allowPlaintextAuth=True)
    v = await run_probe(spec, password_creds(server))
    assert not v.passed
    assert v.details["fallbackUsed"] is True
    assert v.details["fallback"]["reason"] == "PlaintextAuthRefused"
    assert "never sent over a fallback" in v.details["fallback"]["message"]
    assert server.auth_attempts == []
    assert "PlaintextAuthUsed" not in v.warnings
    canary.assert_no_canary(v.message, repr(v.details), where="verdict")


async def test_fallback_upgraded_with_starttls_may_authenticate(relay: Relay) -> None:
    """The fallback stays useful where it is safe: upgraded with STARTTLS."""
    server = relay(mode="starttls")
    spec = make_spec(server.port, mode="implicit", implicit_port=_closed_port(), fallback=True,
                     allowPlaintextAuth=True)
    v = await run_probe(spec, password_creds(server))
    assert v.passed, v.message
    assert [a.tls for a in server.auth_attempts] == [True]
    assert "PlaintextAuthUsed" not in v.warnings and "InsecureFallbackUsed" in v.warnings


async def test_plaintext_auth_used_only_when_auth_was_sent(relay: Relay) -> None:
    """Issue 9 (low): PlaintextAuthUsed was reported although no AUTH was sent (the server
    offered no mechanism we could use)."""
    server = relay(mode="plain", mechanisms=("XOAUTH2",))
    spec = make_spec(server.port, mode="plain", allowPlaintextAuth=True)
    v = await run_probe(spec, password_creds(server))
    assert (v.passed, v.reason) == (False, "AuthNotSupported")
    assert "PlaintextAuthUsed" not in v.warnings
    assert server.auth_attempts == []
    # And when AUTH does go out in clear (the explicit opt-in), the warning says so.
    server2 = relay(mode="plain")
    v2 = await run_probe(make_spec(server2.port, mode="plain", allowPlaintextAuth=True),
                         password_creds(server2))
    assert v2.passed and "PlaintextAuthUsed" in v2.warnings
    assert [a.tls for a in server2.auth_attempts] == [False]
