"""The probe against real Postfix + Dovecot, beyond the verdict: the wire, the messages.

The matrix (test_interop_matrix.py) pins each cell's verdict; these tests look closer:
what actually crossed the socket (through a recording proxy), what the user reads in the
message, how a rejected OAuth token is handled by a real SASL server, and how many round
trips the test costs compared with swaks on the same dialogue.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from reconciler.probe import ProbeCredentials, Verdict, run_probe
from reconciler.resources import IMPLICIT_TLS_CLASS, ExternalSmtpSpec
from reconciler.secret import Secret
from tests.support import canary, peers
from tests.support.canary import assert_no_canary
from tests.support.postfix import (
    PostfixPeer,
    assert_secret_absent,
    postfix_peer,
    run_swaks,
    secret_forms,
    swaks_skip_reason,
)
from tests.support.tcp_proxy import TcpProxy

__all__ = ["postfix_peer"]  # the session fixture, imported for pytest
pytestmark = pytest.mark.postfix


def _spec(peer: PostfixPeer, **overrides: Any) -> ExternalSmtpSpec:
    data: dict[str, Any] = {
        "host": peer.host, "port": peer.starttls_port, "authentication": "UsernamePassword",
        "startTLS": True, "username": peer.user, "passwordFrom": {"env": "UNUSED"},
        "connectionTest": {"timeoutSeconds": 10},
    }
    data.update(overrides)
    return ExternalSmtpSpec.model_validate({k: v for k, v in data.items() if v is not None})


def _oauth_spec(peer: PostfixPeer, listener: str) -> ExternalSmtpSpec:
    return _spec(peer, port=peer.ports[listener], authentication="OAuth2", passwordFrom=None,
                 oauth2ProviderRef={"name": "interop"})


def _password(peer: PostfixPeer) -> ProbeCredentials:
    return ProbeCredentials(password=peer.password, ca_bundle_pem=peer.ca_pem)


def _visible(v: Verdict) -> str:
    """Everything of a verdict that reaches a user (status, `smtpctl test -o json`)."""
    return json.dumps({
        "message": v.message, "action": v.action, "warnings": list(v.warnings),
        "details": v.details, "transcript": [t.to_json() for t in v.transcript],
    }, default=str)


def _assert_clean(v: Verdict) -> None:
    text = _visible(v)
    assert_no_canary(text, where="verdict")
    assert_secret_absent(text, canary.PASSWORD, "verdict")


# --- the wire ------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"startTLS": True}, "StartTLSUnavailable"),
    ({"startTLS": False}, "PlaintextAuthRefused"),
])
async def test_no_auth_bytes_reach_a_plaintext_listener(
    postfix_peer: PostfixPeer, overrides: dict[str, Any], reason: str,
) -> None:
    peer = postfix_peer
    with TcpProxy(peer.host, peer.plain_port) as tap:
        verdict = await run_probe(_spec(peer, port=tap.port, **overrides), _password(peer))
        conns = await tap.closed(1)
    assert verdict.reason == reason
    assert len(conns) == 1
    sent = bytes(conns[0].client_bytes)
    assert b"EHLO" in sent  # the tap saw the dialogue
    assert b"AUTH" not in sent.upper()
    assert_secret_absent(sent, canary.PASSWORD, "the plaintext wire")
    _assert_clean(verdict)


async def test_tap_does_see_plaintext_auth_when_opted_in(postfix_peer: PostfixPeer) -> None:
    """The counterpart that proves the tap above can fail: allowPlaintextAuth sends AUTH."""
    peer = postfix_peer
    with TcpProxy(peer.host, peer.plain_port) as tap:
        verdict = await run_probe(
            _spec(peer, port=tap.port, startTLS=False, allowPlaintextAuth=True), _password(peer))
        conns = await tap.closed(1)
    assert verdict.passed and verdict.warnings == ("PlaintextAuthUsed",)
    sent = bytes(conns[0].client_bytes)
    assert b"AUTH PLAIN " in sent
    assert any(f in sent.decode() for f in secret_forms(canary.PASSWORD))  # as asked...
    _assert_clean(verdict)  # ... but never in what we report


async def test_fallback_upgrades_before_auth(postfix_peer: PostfixPeer) -> None:
    """socketFactory SSL on a STARTTLS port with fallback: the plain retry uses STARTTLS."""
    peer = postfix_peer
    with TcpProxy(peer.host, peer.starttls_port) as tap:
        spec = _spec(peer, port=tap.port, startTLS=False, socketFactory={
            "class": IMPLICIT_TLS_CLASS, "port": tap.port, "fallback": True})
        verdict = await run_probe(spec, _password(peer))
        conns = await tap.closed(2)
    assert verdict.passed, verdict.message
    assert "InsecureFallbackUsed" in verdict.warnings
    assert verdict.details.get("tlsMode") == "starttls"
    assert len(conns) == 2  # the implicit-TLS attempt, then the plain one
    plain = bytes(conns[1].client_bytes)
    assert plain.index(b"STARTTLS") < len(plain)
    cleartext = plain[: plain.index(b"STARTTLS")]
    assert b"AUTH" not in cleartext
    assert_secret_absent(plain, canary.PASSWORD, "the fallback connection")


# --- messages ----------------------------------------------------------------------------


async def test_wrong_password_message_quotes_the_server(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    wrong = Secret(canary.canary("wrong-password"))
    verdict = await run_probe(_spec(peer), ProbeCredentials(password=wrong,
                                                            ca_bundle_pem=peer.ca_pem))
    assert (verdict.passed, verdict.stage, verdict.reason) == (
        False, "auth", "AuthenticationFailed")
    assert "535 5.7.8" in verdict.message
    assert verdict.retryable is False
    assert verdict.details.get("mechanism") == "PLAIN"
    _assert_clean(verdict)
    auth_lines = [t.line for t in verdict.transcript if t.line.startswith("AUTH")]
    assert auth_lines and all(line.split()[-1].strip("*") == "" for line in auth_lines)


async def test_send_as_rejection_quotes_postfix(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    verdict = await run_probe(_spec(peer, **{"from": peer.other_sender}), _password(peer))
    assert not verdict.passed and verdict.stage == "rcpt_to"
    assert "553 5.7.1" in verdict.message
    assert "Sender address rejected: not owned by user" in verdict.message
    assert verdict.retryable is False


@pytest.mark.parametrize(("listener", "mechanism", "status"), [
    ("xoauth2_only", "XOAUTH2", "401"),
    ("oauthbearer_only", "OAUTHBEARER", None),
])
async def test_rejected_token_reports_decoded_challenge(
    postfix_peer: PostfixPeer, listener: str, mechanism: str, status: str | None,
) -> None:
    peer = postfix_peer
    calls: list[bool] = []

    async def provider(force_refresh: bool) -> Secret:
        calls.append(force_refresh)
        return Secret(canary.ACCESS_TOKEN_PREFIX + canary.canary("revoked"))

    verdict = await run_probe(_oauth_spec(peer, listener),
                              ProbeCredentials(token_provider=provider, ca_bundle_pem=peer.ca_pem))
    assert (verdict.stage, verdict.reason) == ("auth", "OAuth2AuthenticationFailed")
    assert verdict.details.get("mechanism") == mechanism
    assert verdict.token_rejected
    assert calls == [False, True]  # one refresh after the first rejection, then give up
    error = verdict.details.get("oauthError") or {}
    assert error.get("status"), verdict.details
    assert f"status={error['status']}" in verdict.message
    if status is not None:
        assert error["status"] == status and "scope=mail" in verdict.message
    assert "535 5.7.8" in verdict.message
    _assert_clean(verdict)


async def test_revoked_token_is_refreshed_and_passes(postfix_peer: PostfixPeer) -> None:
    """Dovecot rejects the cached token; the fresh one from the provider is accepted."""
    peer = postfix_peer
    fresh = peer.issue_token("fresh")
    stale = peer.issue_token("stale")
    peer.introspection.revoke(stale)
    calls: list[bool] = []

    async def provider(force_refresh: bool) -> Secret:
        calls.append(force_refresh)
        return fresh if force_refresh else stale

    verdict = await run_probe(_oauth_spec(peer, "xoauth2_only"),
                              ProbeCredentials(token_provider=provider, ca_bundle_pem=peer.ca_pem))
    assert verdict.passed, verdict.message
    assert calls == [False, True]
    _assert_clean(verdict)


async def test_oauthbearer_payload_names_the_user(postfix_peer: PostfixPeer) -> None:
    """Dovecot matches the introspected username to the SASL authzid: a token granted to
    another user must fail even though it is active."""
    peer = postfix_peer
    token = Secret(canary.ACCESS_TOKEN_PREFIX + canary.canary("other-user"))
    peer.introspection.grant(token, "someone-else@interop.test")

    async def provider(force_refresh: bool) -> Secret:
        return token

    verdict = await run_probe(_oauth_spec(peer, "oauthbearer_only"),
                              ProbeCredentials(token_provider=provider, ca_bundle_pem=peer.ca_pem))
    assert verdict.reason == "OAuth2AuthenticationFailed"
    _assert_clean(verdict)


# --- round trips ---------------------------------------------------------------------------


async def test_probe_needs_no_more_round_trips_than_swaks(postfix_peer: PostfixPeer) -> None:
    """Issue 3's target, counted on the wire: STARTTLS + AUTH PLAIN + MAIL/RCPT."""
    peers.fail_unless(swaks_skip_reason())
    peer = postfix_peer
    with TcpProxy(peer.host, peer.starttls_port) as tap:
        verdict = await run_probe(_spec(peer, port=tap.port), _password(peer))
        probe_conn = (await tap.closed(1))[0]
        tap.reset()
        result = run_swaks(peer.host, tap.port, tls="starttls", auth="PLAIN", user=peer.user,
                           password=peer.password, ca_file=peer.ca_file)
        swaks_conn = tap.wait_closed(1)[0]
    assert verdict.passed and result.passed, (verdict.message, result.verdict)
    assert verdict.details.get("pipelining") is True
    assert 0 < probe_conn.round_trips <= swaks_conn.round_trips, (
        probe_conn.round_trips, swaks_conn.round_trips)


# --- certificates and transient failures ------------------------------------------------


@pytest.mark.parametrize(("listener", "tls", "ca", "says"), [
    ("expired_cert", {}, True, "expired"),
    ("starttls", {"serverName": "localhost"}, True, "not valid for the server name"),
    ("starttls", {}, False, "unknown certificate authority"),
])
async def test_certificate_failure_says_which(
    postfix_peer: PostfixPeer, listener: str, tls: dict[str, Any], ca: bool, says: str,
) -> None:
    """Issue 3: CertificateInvalid must say which - expired, wrong host, unknown CA."""
    peer = postfix_peer
    with TcpProxy(peer.host, peer.ports[listener]) as tap:
        verdict = await run_probe(
            _spec(peer, port=tap.port, tls=tls or None),
            ProbeCredentials(password=peer.password, ca_bundle_pem=peer.ca_pem if ca else None))
        conns = await tap.closed(1)
    assert (verdict.stage, verdict.reason) == ("starttls", "CertificateInvalid")
    assert says in verdict.message
    assert verdict.retryable is False
    # The handshake was refused before a single credential byte: nothing after STARTTLS
    # but TLS records, and no password in any form.
    assert_secret_absent(bytes(conns[0].client_bytes), canary.PASSWORD, "the wire")
    _assert_clean(verdict)


async def test_server_busy_is_transient(postfix_peer: PostfixPeer) -> None:
    peer = postfix_peer
    spec = _spec(peer, port=peer.ports["busy"], connectionTest={"timeoutSeconds": 2})
    verdict = await run_probe(spec, _password(peer))
    assert (verdict.stage, verdict.reason) == ("banner", "ServerUnavailable")
    assert verdict.retryable is True
    assert "421 4.3.2" in verdict.message
    assert verdict.details.get("attempts", 0) > 1  # transient: retried within the deadline


# --- the opt-in test message ---------------------------------------------------------------


async def test_send_test_message_is_queued_by_postfix(postfix_peer: PostfixPeer) -> None:
    """`smtpctl test --send-test-message TO`: a real MTA queues the message.

    The only DATA any interop test sends; the peer's every transport is ``error:``, so
    Postfix bounces it inside its private queue and nothing leaves the machine.
    """
    peer = postfix_peer
    verdict = await run_probe(_spec(peer), _password(peer),
                              send_test_message_to="recipient@elsewhere.test")
    assert verdict.passed, verdict.message
    assert verdict.details.get("testMessageSent") is True
    queued = [t.line for t in verdict.transcript
              if t.direction == "s" and t.line.startswith("250 2.0.0 Ok: queued as ")]
    assert len(queued) == 1
    queue_id = queued[0].rsplit(" ", 1)[-1]
    log = ""
    for _ in range(100):  # Postfix logs the message's fate asynchronously (bounded wait)
        log = peer.maillog.read_text("utf-8", "replace")
        if f"{queue_id}: to=<recipient@elsewhere.test>" in log:
            break
        await asyncio.sleep(0.05)
    assert f"{queue_id}: message-id=<" in log and "@smtpctl.invalid>" in log
    assert f"{queue_id}: to=<recipient@elsewhere.test>" in log
    assert "status=bounced" in log.split(f"{queue_id}: to=<recipient@elsewhere.test>", 1)[1]
    _assert_clean(verdict)
