"""The opt-in pipelined AUTH (``connectionTest.pipelineAuth``) against real Postfix 3.7 +
Dovecot, including Postfix's pipelining enforcement.

``forbid_pipelining`` runs ``smtpd_forbid_unauth_pipelining = yes`` (Postfix hangs up with
``554 5.5.0 Error: SMTP protocol synchronization`` on input sent where RFC 2920/5321 do not
allow it); ``reject_pipelining`` puts ``reject_unauth_pipelining`` first in the recipient
restrictions (``503 5.5.0 ... Improper use of SMTP command pipelining``).  Both treat AUTH
PLAIN with its initial response followed by MAIL/RCPT/RSET/QUIT as legitimate (RFC 4954
section 4), so the probe passes there in one connection and one round trip fewer; the
fallback for servers that object is proven in tests/test_probe_pipelined_auth.py.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import pytest

from reconciler.probe import ProbeCredentials, Verdict, run_probe
from reconciler.resources import IMPLICIT_TLS_CLASS, ExternalSmtpSpec
from reconciler.secret import Secret
from tests.support import canary
from tests.support.postfix import PostfixPeer, assert_secret_absent, postfix_peer, secret_forms
from tests.support.tcp_proxy import TcpProxy

__all__ = ["postfix_peer"]  # the session fixture, imported for pytest
pytestmark = pytest.mark.postfix


def _spec(peer: PostfixPeer, port: int, listener: str, **test: Any) -> ExternalSmtpSpec:
    data: dict[str, Any] = {
        "host": peer.host, "port": port, "authentication": "UsernamePassword",
        "username": peer.user, "passwordFrom": {"env": "UNUSED"},
        "connectionTest": {"timeoutSeconds": 10, "pipelineAuth": True, **test},
    }
    if listener == "implicit":
        data["socketFactory"] = {"class": IMPLICIT_TLS_CLASS, "port": port}
    else:
        data["startTLS"] = True
    return ExternalSmtpSpec.model_validate(data)


def _clean(v: Verdict) -> None:
    text = json.dumps({"message": v.message, "details": v.details,
                       "transcript": [t.to_json() for t in v.transcript]}, default=str)
    canary.assert_no_canary(text, where="verdict")
    for form in secret_forms(canary.PASSWORD):
        assert form not in text


def _waits(v: Verdict) -> int:
    """SMTP round trips from the client's record (see test_probe_pipelined_auth.py)."""
    waits, last = 0, "c"
    for t in v.transcript:
        if t.direction == "s" and last == "c":
            waits += 1
        if t.direction in ("c", "s"):
            last = t.direction
    return waits


@pytest.mark.parametrize("listener", ["starttls", "implicit", "forbid_pipelining",
                                      "reject_pipelining"])
@pytest.mark.parametrize("relay_check", [True, False])
async def test_pipelined_auth_passes_postfix_in_one_connection(
        postfix_peer: PostfixPeer, listener: str, relay_check: bool) -> None:
    peer = postfix_peer
    creds = ProbeCredentials(password=peer.password, ca_bundle_pem=peer.ca_pem)
    seen = len(peer.maillog.read_text("utf-8", "replace"))
    with TcpProxy(peer.host, peer.ports[listener]) as tap:
        plain = await run_probe(_spec(peer, tap.port, listener, pipelineAuth=False,
                                      checkRelay=relay_check), creds)
        piped = await run_probe(_spec(peer, tap.port, listener, checkRelay=relay_check), creds)
        conns = await tap.closed(2)
    assert plain.passed and piped.passed, (plain.message, piped.message)
    assert piped.details["authPipelined"] is True and piped.warnings == ()
    assert len(conns) == 2  # one each: Postfix did not object ...
    logs = peer.maillog.read_text("utf-8", "replace")[seen:]
    assert "improper command pipelining" not in logs  # ... nor log it (with the early input)
    assert_secret_absent(peer.logs(), canary.PASSWORD, "Postfix's and Dovecot's logs")
    assert _waits(piped) == _waits(plain) - 1
    for conn in conns:  # never before TLS
        assert_secret_absent(conn.cleartext_client_bytes, canary.PASSWORD, "the wire")
    _clean(piped)


async def test_wrong_password_pipelined_is_one_failed_login(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    wrong = canary.canary("wrong-pw")
    before = peer.maillog.read_text("utf-8", "replace").count("authentication failed")
    with TcpProxy(peer.host, peer.ports["forbid_pipelining"]) as tap:
        verdict = await run_probe(_spec(peer, tap.port, "forbid_pipelining"),
                                  ProbeCredentials(password=Secret(wrong),
                                                   ca_bundle_pem=peer.ca_pem))
        conns = await tap.closed(1)
    assert (verdict.stage, verdict.reason) == ("auth", "AuthenticationFailed"), verdict.message
    assert verdict.details["authPipelined"] is True and len(conns) == 1
    after = peer.maillog.read_text("utf-8", "replace").count("authentication failed")
    assert after - before == 1
    assert wrong not in json.dumps([t.to_json() for t in verdict.transcript])


@pytest.mark.parametrize(("listener", "says"), [
    ("forbid_pipelining", "554 5.5.0 Error: SMTP protocol synchronization"),
    ("reject_pipelining", "503 5.5.0"),
])
def test_the_enforcement_listeners_do_enforce(postfix_peer: PostfixPeer, listener: str,
                                              says: str) -> None:
    """The listeners above prove something only if they really object to illegal
    pipelining: MAIL/RCPT sent in the same write as EHLO (EHLO must end a group).  No
    credential is sent (Postfix logs the early input)."""
    peer = postfix_peer
    ctx = ssl.create_default_context(cafile=str(peer.ca_file))
    with socket.create_connection((peer.host, peer.ports[listener]), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"EHLO [127.0.0.1]\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220")
        with ctx.wrap_socket(raw, server_hostname=peer.host) as tls:
            # A sender nobody owns: the send-as check lets it through to the relay rules.
            tls.sendall(f"EHLO [127.0.0.1]\r\nMAIL FROM:<nobody@unowned.test>\r\n"
                        f"RCPT TO:<{peer.user}>\r\nQUIT\r\n".encode())
            replies = b""
            for _ in range(64):  # bounded: until the server closes (it says QUIT or hangs up)
                chunk = tls.recv(65536)
                if not chunk:
                    break
                replies += chunk
    text = replies.decode("utf-8", "replace")
    assert says in text, text
    if listener == "reject_pipelining":
        assert "Improper use of SMTP command pipelining" in text, text
