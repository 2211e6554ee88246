"""The probe against the real aiosmtpd relay (devservers) in every TLS mode."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import ProbeCredentials, Verdict, run_probe
from reconciler.secret import Secret
from tests.support import canary
from tests.support.smtp_servers import (  # noqa: F401
    OTHER,
    USER,
    make_spec,
    password_creds,
    relay_fixture,
    shared_ca_fixture,
)

Relay = Callable[..., RelayServer]
FROM_USER: dict[str, Any] = {"from": USER}  # `from` is a keyword: passed as **extra


def assert_clean(v: Verdict) -> None:
    canary.assert_no_canary(
        v.message, "\n".join(t.line for t in v.transcript), repr(v.details), where="verdict")


def sent_lines(v: Verdict) -> list[str]:
    return [t.line for t in v.transcript if t.direction == "c"]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_passes_with_tls_and_relay_check(relay: Relay, mode: str) -> None:
    server = relay(mode=mode)
    v = await run_probe(make_spec(server.port, mode=mode), password_creds(server))
    assert v.passed, v.message
    assert v.reason == "TestPassed" and v.stage == "quit"
    assert v.details["tlsMode"] == mode
    assert v.details["tlsVersion"] in ("TLSv1.2", "TLSv1.3")
    assert v.details["mechanism"] == "PLAIN"
    assert v.details["peer"] == f"127.0.0.1:{server.port}"
    assert v.details["fallbackUsed"] is False
    assert v.warnings == ()
    lines = sent_lines(v)
    assert f"MAIL FROM:<{USER}>" in lines and f"RCPT TO:<{USER}>" in lines and "RSET" in lines
    assert not any(line.startswith("DATA") for line in lines)  # never sends mail
    assert server.messages == []
    assert [a.success for a in server.auth_attempts] == [True]
    assert all(a.tls for a in server.auth_attempts)
    assert set(v.stage_seconds) >= {"resolve", "connect", "banner", "ehlo", "auth", "quit"}
    assert all(t.elapsed_seconds >= 0 for t in v.transcript)
    assert_clean(v)


async def test_pipelining_sends_mail_rcpt_rset_in_one_go(relay: Relay) -> None:
    server = relay(mode="starttls")
    v = await run_probe(make_spec(server.port), password_creds(server))
    assert v.passed and v.details["pipelining"] is True
    directions = [t.direction for t in v.transcript]
    start = sent_lines(v).index(f"MAIL FROM:<{USER}>")
    # the three commands are recorded before any of their replies
    c_idx = [i for i, t in enumerate(v.transcript) if t.line.startswith(("MAIL", "RCPT", "RSET"))]
    assert directions[c_idx[0]:c_idx[0] + 3] == ["c", "c", "c"]
    assert start >= 0


async def test_without_pipelining_commands_are_sequential(relay: Relay) -> None:
    server = relay(mode="starttls", advertise_pipelining=False)
    v = await run_probe(make_spec(server.port), password_creds(server))
    assert v.passed and v.details["pipelining"] is False
    i = [t.line for t in v.transcript].index(f"MAIL FROM:<{USER}>")
    assert v.transcript[i + 1].direction == "s"


@pytest.mark.parametrize("mechs,expected", [
    (("LOGIN",), "LOGIN"), (("CRAM-MD5",), "CRAM-MD5"), (("LOGIN", "PLAIN"), "PLAIN"),
])
async def test_password_mechanisms(relay: Relay, mechs: tuple[str, ...], expected: str) -> None:
    server = relay(mode="starttls", mechanisms=mechs)
    v = await run_probe(make_spec(server.port), password_creds(server))
    assert v.passed, v.message
    assert v.details["mechanism"] == expected
    assert [a.mechanism for a in server.auth_attempts] == [expected]
    assert f"MAIL FROM:<{USER}>" in sent_lines(v)  # the user name is not over-redacted
    assert any(line.startswith(f"AUTH {expected}") for line in sent_lines(v))
    assert_clean(v)


async def test_wrong_password_is_one_failed_login(relay: Relay) -> None:
    server = relay(mode="starttls", mechanisms=("PLAIN", "LOGIN"))
    wrong = password_creds(server, password=canary.canary("wrong"))
    v = await run_probe(make_spec(server.port), wrong)
    assert not v.passed
    assert (v.reason, v.stage) == ("AuthenticationFailed", "auth")
    assert v.message.startswith("Authentication failed: Bad username / password")
    assert "535" in v.message
    assert v.retryable is False
    assert len(server.auth_attempts) == 1  # one mechanism, one try: no lockout storms
    assert_clean(v)


async def test_no_usable_mechanism(relay: Relay) -> None:
    server = relay(mode="starttls", mechanisms=("XOAUTH2",))
    v = await run_probe(make_spec(server.port), password_creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "AuthNotSupported", "auth")
    assert server.auth_attempts == []


async def test_plaintext_auth_refused_sends_no_auth(relay: Relay) -> None:
    server = relay(mode="plain")
    v = await run_probe(make_spec(server.port, mode="plain"), password_creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "PlaintextAuthRefused", "auth")
    assert not any(line.startswith("AUTH") for line in sent_lines(v))
    assert server.auth_attempts == []


async def test_plaintext_auth_when_opted_in_warns(relay: Relay) -> None:
    server = relay(mode="plain")
    spec = make_spec(server.port, mode="plain", allowPlaintextAuth=True)
    v = await run_probe(spec, password_creds(server))
    assert v.passed, v.message
    assert v.warnings == ("PlaintextAuthUsed",)
    assert [a.tls for a in server.auth_attempts] == [False]
    assert_clean(v)


async def test_starttls_false_against_starttls_server_hints(relay: Relay) -> None:
    server = relay(mode="starttls")
    v = await run_probe(make_spec(server.port, mode="plain"), password_creds(server))
    assert v.reason == "PlaintextAuthRefused"
    assert "spec.startTLS" in v.message


async def test_no_auth_against_auth_required_server(relay: Relay) -> None:
    server = relay(mode="starttls")
    v = await run_probe(make_spec(server.port, auth="None", **FROM_USER),
                        ProbeCredentials(ca_bundle_pem=server.ca_pem))
    assert (v.passed, v.reason, v.stage) == (False, "AuthenticationRequired", "mail_from")


async def test_no_auth_server_without_auth_passes(relay: Relay) -> None:
    server = relay(mode="plain", auth_required=False)
    v = await run_probe(make_spec(server.port, mode="plain", auth="None", **FROM_USER),
                        ProbeCredentials())
    assert v.passed, v.message
    assert v.details["mechanism"] is None


async def test_must_issue_starttls_first(relay: Relay) -> None:
    server = relay(mode="starttls", auth_required=False)
    v = await run_probe(make_spec(server.port, mode="plain", auth="None", **FROM_USER),
                        ProbeCredentials())
    assert (v.passed, v.reason, v.stage) == (False, "StartTLSRequired", "mail_from")


async def test_sender_rejected(relay: Relay) -> None:
    server = relay(mode="starttls", allowed_senders=[OTHER])
    v = await run_probe(make_spec(server.port), password_creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "SenderRejected", "mail_from")
    assert "553" in v.message


async def test_relay_denied_for_probe_recipient(relay: Relay) -> None:
    server = relay(mode="starttls", allowed_recipients=["@example.test"])
    spec = make_spec(server.port, connectionTest={"probeRecipient": "x@elsewhere.test"})
    v = await run_probe(spec, password_creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "RelayDenied", "rcpt_to")
    assert "554" in v.message


async def test_relay_check_can_be_switched_off(relay: Relay) -> None:
    server = relay(mode="starttls", allowed_senders=[OTHER])
    spec = make_spec(server.port, connectionTest={"checkRelay": False})
    v = await run_probe(spec, password_creds(server))
    assert v.passed and v.details["relayCheck"] == "skipped"
    assert not any(line.startswith("MAIL") for line in sent_lines(v))


async def test_send_test_message_is_opt_in(relay: Relay) -> None:
    server = relay(mode="starttls")
    v = await run_probe(make_spec(server.port), password_creds(server),
                        send_test_message_to=OTHER)
    assert v.passed, v.message
    assert len(server.messages) == 1
    assert server.messages[0].rcpt_tos == (OTHER,)
    assert v.details["testMessageSent"] is True


async def test_unknown_ca_is_certificate_invalid(relay: Relay) -> None:
    server = relay(mode="implicit")
    v = await run_probe(make_spec(server.port, mode="implicit"),
                        ProbeCredentials(password=Secret(canary.PASSWORD)))
    assert (v.passed, v.reason, v.stage) == (False, "CertificateInvalid", "tls")
    assert v.details["certificateProblem"] == "unknown-ca"
    assert server.auth_attempts == []


async def test_verify_false_passes_with_warning(relay: Relay) -> None:
    server = relay(mode="starttls")
    spec = make_spec(server.port, tls={"verify": False})
    v = await run_probe(spec, ProbeCredentials(password=Secret(canary.PASSWORD)))
    assert v.passed, v.message
    assert "TLSVerificationDisabled" in v.warnings


async def test_server_name_is_checked(relay: Relay) -> None:
    server = relay(mode="starttls")
    spec = make_spec(server.port, tls={"serverName": "mail.other.test"})
    v = await run_probe(spec, password_creds(server))
    assert (v.reason, v.stage) == ("CertificateInvalid", "starttls")
    assert v.details["certificateProblem"] == "wrong-host"
    assert "mail.other.test" in v.message


async def test_localhost_name_resolves_and_verifies(relay: Relay) -> None:
    server = relay(mode="implicit")
    v = await run_probe(make_spec(server.port, mode="implicit", host="localhost"),
                        password_creds(server))
    assert v.passed, v.message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retried_then_reported() -> None:
    port = _closed_port()
    v = await run_probe(make_spec(port, timeout=3), password_creds())
    assert (v.passed, v.reason, v.stage) == (False, "ConnectionRefused", "connect")
    assert v.retryable is True
    assert v.details["attempts"] >= 2
    assert v.message.startswith("Could not connect to SMTP host")


async def test_fallback_to_starttls_passes_with_warning(relay: Relay) -> None:
    server = relay(mode="starttls")
    spec = make_spec(server.port, mode="implicit", implicit_port=_closed_port(), fallback=True)
    v = await run_probe(spec, password_creds(server))
    assert v.passed, v.message
    assert v.details["fallbackUsed"] is True
    assert v.details["tlsMode"] == "starttls"
    assert "InsecureFallbackUsed" in v.warnings
    assert all(a.tls for a in server.auth_attempts)


async def test_fallback_to_plaintext_never_sends_credentials(relay: Relay) -> None:
    server = relay(mode="plain")
    spec = make_spec(server.port, mode="implicit", implicit_port=_closed_port(), fallback=True)
    v = await run_probe(spec, password_creds(server))
    assert not v.passed
    assert v.reason == "ConnectionRefused"  # the root cause: implicit TLS failed
    assert v.details["fallback"]["reason"] == "PlaintextAuthRefused"
    assert server.auth_attempts == []


async def test_fallback_plain_without_credentials_passes(relay: Relay) -> None:
    server = relay(mode="plain", auth_required=False)
    spec = make_spec(server.port, mode="implicit", implicit_port=_closed_port(), fallback=True,
                     auth="None", **FROM_USER)
    v = await run_probe(spec, ProbeCredentials())
    assert v.passed, v.message
    assert v.warnings == ("InsecureFallbackUsed",)


async def test_implicit_tls_against_starttls_port(relay: Relay) -> None:
    server = relay(mode="starttls")
    v = await run_probe(make_spec(server.port, mode="implicit"), password_creds(server))
    # its own reason since issue 13: "this port speaks plain SMTP: use startTLS"
    assert (v.passed, v.reason, v.stage) == (False, "ImplicitTLSToPlainPort", "tls")


async def test_plain_client_against_implicit_port_times_out(relay: Relay) -> None:
    server = relay(mode="implicit")
    v = await run_probe(make_spec(server.port, mode="starttls", timeout=1), password_creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "ReadTimeout", "banner")
    assert v.message.startswith("Read timed out")


async def test_ipv6_loopback_literal(relay: Relay) -> None:
    # IPv6 loopback is part of the environment the suite needs (the egress guard and the
    # transcript's peer formatting are judged on it): its absence fails, never skips.
    assert socket.has_ipv6, "this Python was built without IPv6: the suite needs ::1"
    server = relay(mode="implicit", host="::1")
    v = await run_probe(make_spec(server.port, mode="implicit", host="::1"),
                        password_creds(server))
    assert v.passed, v.message
    assert v.details["peer"] == f"[::1]:{server.port}"
