"""The opt-in pipelined AUTH (``connectionTest.pipelineAuth``) against real servers.

The aiosmtpd relay of ``reconciler.devservers`` (PIPELINING advertised) and the same relay
enforcing SMTP synchronisation with AUTH as a sync point - stricter than RFC 4954, which
lets AUTH PLAIN with an initial response be pipelined: it hangs up with ``554 5.5.0 SMTP
synchronization error`` (Exim), rejects every recipient with ``503 5.5.0 ... Improper use
of SMTP command pipelining`` (Postfix's ``reject_unauth_pipelining``) or drops the early
input without a word.  Round trips are counted on the wire (``tests/support/tcp_proxy.py``);
every verdict and the wire are searched for the password (canaries).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trustme

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import Verdict, run_probe
from reconciler.probe.verdict import TranscriptLine
from reconciler.resources import ExternalSmtpSpec
from tests.support import canary
from tests.support.faults import FaultServer, fault, server_context
from tests.support.smtp_servers import (  # noqa: F401 - fixtures
    USER,
    TokenSource,
    make_spec,
    password_creds,
    relay_fixture,
    shared_ca_fixture,
)
from tests.support.tcp_proxy import Connection, TcpProxy

__all__ = ["fault"]  # the fixture

Relay = Callable[..., RelayServer]


def _spec(port: int, *, pipeline: bool = True, mode: str = "starttls", **extra: Any,
          ) -> ExternalSmtpSpec:
    test = {"pipelineAuth": pipeline, **extra.pop("connectionTest", {})}
    return make_spec(port, mode=mode, connectionTest=test, **extra)


def _clean(v: Verdict) -> None:
    canary.assert_no_canary(json.dumps({
        "message": v.message, "details": v.details, "warnings": list(v.warnings),
        "transcript": [t.to_json() for t in v.transcript]}, default=str), where="verdict")


async def _through_proxy(server: RelayServer, spec_of: Callable[[int], ExternalSmtpSpec],
                         ) -> tuple[Verdict, list[Connection]]:
    with TcpProxy("127.0.0.1", server.port) as tap:
        verdict = await run_probe(spec_of(tap.port), password_creds(server))
        conns = await tap.closed(1)
    return verdict, conns


def _lines(transcript: Sequence[TranscriptLine]) -> list[str]:
    return [t.line for t in transcript]


def _waits(transcript: Sequence[TranscriptLine]) -> int:
    """SMTP round trips, from the client's own record: how often it waited for a reply
    (the banner, then every reply that follows something it sent).  The TLS handshake is
    one more; the wire counts are in bench/pipelining.py (with latency injected, where
    they are deterministic)."""
    waits, last = 0, "c"
    for t in transcript:
        if t.direction == "s" and last == "c":
            waits += 1
        if t.direction in ("c", "s"):
            last = t.direction
    return waits


async def test_pipelined_auth_saves_one_round_trip(relay: Relay) -> None:
    """STARTTLS + AUTH PLAIN + relay check: 6 round trips instead of 7 (counted on the
    wire), one connection, one login, the same verdict."""
    server = relay()
    plain, _ = await _through_proxy(server, lambda p: _spec(p, pipeline=False))
    piped, conns = await _through_proxy(server, lambda p: _spec(p))
    assert plain.passed and piped.passed, (plain.message, piped.message)
    assert piped.details["authPipelined"] is True and plain.details["authPipelined"] is False
    assert server.connections == 2 and len(conns) == 1
    assert [a.success for a in server.auth_attempts] == [True, True]
    assert piped.warnings == () and piped.details["relayCheck"] == "passed"
    # banner, EHLO, STARTTLS, EHLO, AUTH, MAIL..QUIT (+ the TLS handshake: 7 -> 6)
    assert (_waits(plain.transcript), _waits(piped.transcript)) == (6, 5)
    # The whole tail went out in one write after the second EHLO's reply.
    lines = _lines(piped.transcript)
    at = lines.index("AUTH PLAIN ******")
    assert lines[at:at + 5] == ["AUTH PLAIN ******", f"MAIL FROM:<{USER}>",
                                f"RCPT TO:<{USER}>", "RSET", "QUIT"]
    _clean(piped)


async def test_without_a_relay_check_auth_and_quit_share_one_write(relay: Relay) -> None:
    server = relay(mode="implicit")
    plain = await run_probe(_spec(server.port, pipeline=False, mode="implicit",
                                  connectionTest={"checkRelay": False}),
                            password_creds(server))
    piped = await run_probe(_spec(server.port, mode="implicit",
                                  connectionTest={"checkRelay": False}),
                            password_creds(server))
    assert plain.passed and piped.passed, (plain.message, piped.message)
    # banner, EHLO, AUTH, QUIT -> banner, EHLO, AUTH+QUIT (+ the TLS handshake)
    assert (_waits(plain.transcript), _waits(piped.transcript)) == (4, 3)
    lines = _lines(piped.transcript)
    assert lines[lines.index("AUTH PLAIN ******") + 1] == "QUIT"
    assert piped.details["relayCheck"] == "skipped"


async def test_a_wrong_password_is_one_failed_login_and_not_retried(relay: Relay) -> None:
    server = relay()
    verdict = await run_probe(_spec(server.port), password_creds(
        server, password=canary.canary("wrong")))
    assert (verdict.stage, verdict.reason) == ("auth", "AuthenticationFailed")
    assert verdict.details["authPipelined"] is True
    assert [a.success for a in server.auth_attempts] == [False]
    assert server.connections == 1 and "PipelinedAuthRefused" not in verdict.warnings
    _clean(verdict)


@pytest.mark.parametrize("enforce", ["disconnect", "reject", "discard"])
async def test_a_server_that_objects_gets_the_test_again_without_it(
        relay: Relay, enforce: str) -> None:
    """The server must not make the test fail: a second connection at once, without the
    pipelined AUTH, passes, and the warning tells the user to switch the opt-in off."""
    server = relay(enforce_sync=enforce)
    verdict = await run_probe(_spec(server.port, connectionTest={"timeoutSeconds": 6}),
                              password_creds(server))
    assert verdict.passed, verdict.message
    assert server.sync_violations == ["AUTH"], server.sync_violations
    assert server.connections == 2
    assert verdict.warnings == ("PipelinedAuthRefused",)
    assert verdict.details["authPipelined"] is False  # the connection that passed
    said = verdict.details["pipelinedAuthRefused"]
    assert {"disconnect": "554 5.5.0 SMTP synchronization error",
            "reject": "Improper use of SMTP command pipelining",
            "discard": "got no reply"}[enforce] in said, said
    logins = [a.success for a in server.auth_attempts]
    assert logins == ([True] if enforce == "disconnect" else [True, True]), logins
    assert any("testing again without pipelining AUTH" in line
               for line in _lines(verdict.transcript))
    _clean(verdict)


async def test_the_sync_enforcing_server_passes_the_default_probe(relay: Relay) -> None:
    """The stand-in is strict, not broken: the probe's default dialogue (MAIL..QUIT
    pipelined, nothing after a sync point) passes it with no violation."""
    server = relay(enforce_sync="disconnect")
    verdict = await run_probe(_spec(server.port, pipeline=False), password_creds(server))
    assert verdict.passed and server.sync_violations == [], verdict.message


@pytest.mark.parametrize("why", ["no PIPELINING", "LOGIN only", "OAuth2", "test message"])
async def test_not_pipelined_where_rfc_4954_does_not_allow_it(relay: Relay, why: str) -> None:
    """Only AUTH PLAIN with its initial response is followed by other commands; the
    strict server would hang up on anything else - so every case passes it untouched."""
    kwargs: dict[str, Any] = {"enforce_sync": "disconnect"}
    if why == "no PIPELINING":
        kwargs["advertise_pipelining"] = False
    if why == "LOGIN only":
        kwargs["mechanisms"] = ("LOGIN",)
    server = relay(**kwargs)
    if why == "OAuth2":
        tokens = TokenSource()
        server.tokens[tokens.tokens[0]] = USER
        verdict = await run_probe(_spec(server.port, auth="OAuth2"), tokens.creds(server))
    elif why == "test message":
        verdict = await run_probe(_spec(server.port), password_creds(server),
                                  send_test_message_to=USER)
    else:
        verdict = await run_probe(_spec(server.port), password_creds(server))
    assert verdict.passed, verdict.message
    assert verdict.details["authPipelined"] is False
    assert server.sync_violations == [] and server.connections == 1
    _clean(verdict)


async def test_a_server_that_hangs_up_on_auth_is_tried_once_more_then_fails(
        fault: type[FaultServer], shared_ca: trustme.CA) -> None:
    """Hanging up instead of answering the pipelined AUTH may be an objection to the early
    input: one more connection without it - where this server hangs up again, and that is
    the verdict (no third try)."""
    server = fault("disconnect_after_auth", tls="implicit",
                   server_context=server_context(shared_ca.issue_cert("127.0.0.1")))
    verdict = await run_probe(_spec(server.port, mode="implicit"),
                              password_creds(ca_pem=shared_ca.cert_pem.bytes().decode()))
    assert (verdict.passed, verdict.stage, verdict.reason) == (False, "auth", "ProtocolError")
    assert len(server.connections) == 2
    assert verdict.warnings == ("PipelinedAuthRefused",)
    assert "without answering the pipelined AUTH" in verdict.details["pipelinedAuthRefused"]
    _clean(verdict)
