"""The probe against a fault-injecting server: every way a server can misbehave."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest
import trustme

from reconciler.probe import ProbeCredentials, Verdict, run_probe
from reconciler.secret import Secret
from tests.support import canary
from tests.support.faults import FaultServer, self_signed_context, server_context
from tests.support.faults import fault as fault  # the fixture
from tests.support.smtp_servers import make_spec


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def creds(ca: trustme.CA | None = None) -> ProbeCredentials:
    pem = ca.cert_pem.bytes().decode() if ca is not None else None
    return ProbeCredentials(password=Secret(canary.PASSWORD), ca_bundle_pem=pem)


def assert_clean(v: Verdict) -> None:
    canary.assert_no_canary(v.message, "\n".join(t.line for t in v.transcript), where="verdict")


async def test_no_banner_is_read_timeout(fault: type[FaultServer]) -> None:
    server = fault("no_banner")
    v = await run_probe(make_spec(server.port, timeout=1), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ReadTimeout", "banner")
    assert v.details["attempts"] == 1  # a timeout is not retried: the budget is spent


async def test_slow_server_exceeds_the_deadline(fault: type[FaultServer]) -> None:
    # every reply 0.9 s late: each one is well inside the 2 s read timeout, but together
    # they overrun the 4 s deadline (no PIPELINING, so every command costs a delay)
    server = fault("no_starttls", delay=0.9, extensions=("AUTH PLAIN LOGIN",))
    v = await run_probe(make_spec(server.port, mode="plain", timeout=4, allowPlaintextAuth=True),
                        creds())
    assert (v.passed, v.reason) == (False, "DeadlineExceeded")
    assert v.stage in ("auth", "mail_from", "rcpt_to")
    assert v.retryable is True


async def test_banner_then_close(fault: type[FaultServer]) -> None:
    server = fault("banner_close")
    v = await run_probe(make_spec(server.port), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ProtocolError", "ehlo")


async def test_421_at_banner_is_transient_and_retried(fault: type[FaultServer]) -> None:
    server = fault("busy")
    v = await run_probe(make_spec(server.port, timeout=4), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ServerUnavailable", "banner")
    assert v.retryable is True
    assert len(server.connections) >= 2
    assert "421" in v.message


async def test_garbage_greeting(fault: type[FaultServer]) -> None:
    server = fault("garbage")
    v = await run_probe(make_spec(server.port), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ProtocolError", "banner")


async def test_endless_multiline_reply_is_bounded(fault: type[FaultServer]) -> None:
    server = fault("endless", limit=2_000_000)
    v = await run_probe(make_spec(server.port, timeout=5), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ProtocolError", "banner")
    assert "too long" in v.message
    assert sum(len(t.line) for t in v.transcript) < 10_000


async def test_one_megabyte_line(fault: type[FaultServer]) -> None:
    server = fault("huge_line")
    v = await run_probe(make_spec(server.port, timeout=5), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ProtocolError", "banner")


async def test_one_byte_per_second_is_cut_off(fault: type[FaultServer]) -> None:
    server = fault("drip")
    v = await run_probe(make_spec(server.port, timeout=2), creds())
    assert (v.passed, v.reason, v.stage) == (False, "ReadTimeout", "banner")
    # the probe hung up long before the server finished its greeting
    assert server.connections[0].bytes_sent < 10


async def test_starttls_advertised_then_refused(fault: type[FaultServer]) -> None:
    server = fault("starttls_refused")
    v = await run_probe(make_spec(server.port), creds())
    assert (v.passed, v.reason, v.stage) == (False, "StartTLSUnavailable", "starttls")
    assert v.message.startswith("Could not convert socket to TLS")
    assert b"AUTH" not in server.all_plaintext


async def test_starttls_not_advertised_is_a_downgrade(fault: type[FaultServer]) -> None:
    server = fault("no_starttls")
    v = await run_probe(make_spec(server.port), creds())
    assert (v.passed, v.reason, v.stage) == (False, "StartTLSUnavailable", "starttls")
    assert b"AUTH" not in server.all_plaintext  # the downgrade carried no credentials
    assert b"STARTTLS" not in server.all_plaintext


async def test_no_starttls_with_plaintext_opt_in_sends_auth(fault: type[FaultServer]) -> None:
    server = fault("no_starttls")
    v = await run_probe(make_spec(server.port, mode="plain", allowPlaintextAuth=True), creds())
    assert v.passed, v.message
    assert b"AUTH PLAIN" in server.all_plaintext  # the opt-in is the only way
    assert "PlaintextAuthUsed" in v.warnings


@pytest.mark.parametrize("kind", ["expired", "wrong-host", "self-signed", "unknown-ca"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_bad_certificates(fault: type[FaultServer], ca: trustme.CA, kind: str,
                                tls: str) -> None:
    if kind == "expired":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        ctx = server_context(ca.issue_cert("127.0.0.1", "localhost",
                                           not_before=past - dt.timedelta(days=30),
                                           not_after=past))
    elif kind == "wrong-host":
        ctx = server_context(ca.issue_cert("mail.elsewhere.test"))
    elif kind == "self-signed":
        ctx = self_signed_context(trustme.CA())
    else:
        ctx = server_context(trustme.CA().issue_cert("127.0.0.1"))
    server = fault("ok", tls="implicit" if tls == "implicit" else "none", server_context=ctx)
    v = await run_probe(make_spec(server.port, mode=tls), creds(ca))
    assert (v.passed, v.reason) == (False, "CertificateInvalid")
    assert v.stage == ("tls" if tls == "implicit" else "starttls")
    assert v.details["certificateProblem"] == kind
    assert b"AUTH" not in server.all_plaintext
    assert all("AUTH" not in c.commands for c in server.connections)


async def test_good_certificate_with_fault_server(fault: type[FaultServer], ca: trustme.CA) -> None:
    server = fault("ok", server_context=server_context(ca.issue_cert("127.0.0.1")))
    v = await run_probe(make_spec(server.port), creds(ca))
    assert v.passed, v.message


async def test_disconnect_after_auth(fault: type[FaultServer], ca: trustme.CA) -> None:
    server = fault("disconnect_after_auth", tls="implicit",
                   server_context=server_context(ca.issue_cert("127.0.0.1")))
    v = await run_probe(make_spec(server.port, mode="implicit"), creds(ca))
    assert (v.passed, v.reason, v.stage) == (False, "ProtocolError", "auth")
    assert len(server.connections) == 1  # nothing after AUTH is retried


async def test_tls_min_version_13_against_12_only_server(fault: type[FaultServer],
                                                         ca: trustme.CA) -> None:
    import ssl

    ctx = server_context(ca.issue_cert("127.0.0.1"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server = fault("ok", tls="implicit", server_context=ctx)
    v = await run_probe(make_spec(server.port, mode="implicit", tls={"minVersion": "1.3"}),
                        creds(ca))
    assert (v.passed, v.reason, v.stage) == (False, "TLSHandshakeFailed", "tls")


PROVIDER_REPLIES = [
    ("AUTH", "534-5.7.9 Application-specific password required. Learn more at\r\n"
             "534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor",
     "ApplicationPasswordRequired", "auth"),
    ("AUTH", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
             "for the Tenant.", "SmtpAuthDisabled", "auth"),
    ("AUTH", "454 4.7.0 Temporary authentication failure", "ServerUnavailable", "auth"),
    ("MAIL", "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
     "SendAsDenied", "mail_from"),
    ("MAIL", "530 5.7.0 Must issue a STARTTLS command first", "StartTLSRequired", "mail_from"),
    ("RCPT", "550 5.7.1 Relaying denied", "RelayDenied", "rcpt_to"),
    # Postfix's smtpd_delay_reject: a sender mismatch is answered at RCPT TO
    ("RCPT", "553 5.7.1 <other@example.test>: Sender address rejected: not owned by user "
             "app@example.test", "SenderRejected", "rcpt_to"),
    ("EHLO", "421 4.7.0 Too many connections", "ServerUnavailable", "ehlo"),
]


@pytest.mark.parametrize("verb,reply,reason,stage", PROVIDER_REPLIES)
async def test_provider_replies(fault: type[FaultServer], ca: trustme.CA, verb: str,
                                reply: str, reason: str, stage: str) -> None:
    server = fault("ok", tls="implicit", server_context=server_context(ca.issue_cert("127.0.0.1")),
                   replies={verb: reply})
    v = await run_probe(make_spec(server.port, mode="implicit", timeout=3), creds(ca))
    assert (v.passed, v.reason, v.stage) == (False, reason, stage)
    assert v.retryable is reply.startswith("4")


async def test_credential_echoed_by_server_is_masked(fault: type[FaultServer],
                                                     ca: trustme.CA) -> None:
    """A broken server quotes our AUTH line back; the transcript must not carry it."""
    server = fault("ok", tls="implicit", server_context=server_context(ca.issue_cert("127.0.0.1")),
                   replies={"AUTH": "501 5.5.2 Syntax error in {line}"})
    v = await run_probe(make_spec(server.port, mode="implicit"), creds(ca))
    assert (v.passed, v.stage) == (False, "auth")
    assert any(t.direction == "s" and t.line.startswith("501") and "******" in t.line
               for t in v.transcript)
    assert_clean(v)


async def test_connect_timeout() -> None:
    """A listener whose accept queue is full drops SYNs: the connect never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the (tiny) backlog
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        v = await run_probe(make_spec(port, timeout=2), creds())
        # Linux drops SYNs to a listener whose accept queue is full; a kernel that completed
        # the handshake anyway would show ReadTimeout here: that fails (never a skip).
        assert (v.passed, v.reason, v.stage) == (False, "ConnectTimeout", "connect")
        assert v.message.startswith("Connect timed out")
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_server_hangs_up_after_rejecting_token(fault: type[FaultServer],
                                                     ca: trustme.CA) -> None:
    """Refresh once, reconnect once with the fresh token, then report the rejection."""
    from tests.support.smtp_servers import TokenSource, new_token

    challenge = "334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0="
    server = fault("ok", tls="implicit", server_context=server_context(ca.issue_cert("127.0.0.1")),
                   extensions=("AUTH XOAUTH2",), replies={"AUTH": challenge, "": "535 5.7.8 no"},
                   close_after=("",))
    source = TokenSource(new_token(), new_token())
    spec = make_spec(server.port, mode="implicit", auth="OAuth2")
    v = await run_probe(spec, ProbeCredentials(token_provider=source,
                                               ca_bundle_pem=ca.cert_pem.bytes().decode()))
    assert (v.passed, v.reason, v.stage) == (False, "OAuth2AuthenticationFailed", "auth")
    assert v.token_rejected is True
    assert source.calls == [False, True]
    assert len(server.connections) == 2
    assert "status=401" in v.message
    assert_clean(v)


async def test_tls_handshake_timeout_does_not_fall_back(fault: type[FaultServer]) -> None:
    """JavaMail's fallback skips timeouts; so do we (the budget is spent)."""
    server = fault("no_banner")
    spec = make_spec(server.port, mode="implicit", fallback=True, timeout=1)
    v = await run_probe(spec, creds())
    assert (v.passed, v.reason, v.stage) == (False, "ReadTimeout", "tls")
    assert v.details["fallbackUsed"] is False
    assert len(server.connections) == 1


async def test_cancellation_propagates(fault: type[FaultServer]) -> None:
    """Cancelled inside the SMTP dialogue, the probe raises CancelledError and hangs up.

    The cancel is sent only once the server has accepted the probe's connection (an event,
    not a poll with a give-up: the old loop cancelled after 2 s whether or not a connection
    had been made, so a probe that never connected passed too).  Shown failing against a
    build whose ``run_probe`` turns ``CancelledError`` into a verdict (``DID NOT RAISE``),
    and against one that sleeps 60 s before connecting ("the probe never connected").
    """
    server = fault("no_banner")
    task = asyncio.create_task(run_probe(make_spec(server.port, timeout=30), creds()))
    loop = asyncio.get_running_loop()
    connected = await loop.run_in_executor(None, server.accepted.wait, 20)
    assert connected, "the probe never connected"
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closed = await loop.run_in_executor(None, server.connections[0].closed.wait, 20)
    assert closed, "the cancelled probe left its connection open"


async def test_cancellation_arriving_with_a_result_is_not_swallowed(
        fault: type[FaultServer], ca: trustme.CA) -> None:
    """A cancel that arrives in the same step as the awaited result still cancels.

    Python 3.11's ``asyncio.wait_for`` returns the inner result when the cancellation and
    the result coincide, and the cancellation is lost: the probe went on talking to the
    server for up to its whole timeout after its caller (an operator shutting down, a
    deadline above it) had cancelled it.  The token provider makes the coincidence
    deterministic: it cancels the probe, then returns its token.  Before the probe used
    ``asyncio.timeout`` instead of ``wait_for``, this test failed with ``DID NOT RAISE``
    (the probe went on and returned a verdict); the race also made
    ``test_cancellation_propagates`` fail now and then under load (the cancel coinciding
    with the connect).
    """
    from tests.support.smtp_servers import new_token

    server = fault("ok", tls="implicit", server_context=server_context(ca.issue_cert("127.0.0.1")),
                   extensions=("AUTH XOAUTH2",))
    task: asyncio.Task[Verdict] | None = None

    async def provider(force_refresh: bool) -> Secret:
        assert task is not None
        task.cancel()
        return Secret(new_token())

    spec = make_spec(server.port, mode="implicit", auth="OAuth2")
    task = asyncio.create_task(run_probe(spec, ProbeCredentials(
        token_provider=provider, ca_bundle_pem=ca.cert_pem.bytes().decode())))
    with pytest.raises(asyncio.CancelledError):
        await task
    closed = await asyncio.get_running_loop().run_in_executor(
        None, server.connections[0].closed.wait, 20)
    assert closed, "the cancelled probe left its connection open"


async def test_hangup_after_rcpt_still_passes(fault: type[FaultServer], ca: trustme.CA) -> None:
    """MAIL and RCPT were accepted: a server that does not answer RSET/QUIT is fine."""
    server = fault("ok", tls="implicit", server_context=server_context(ca.issue_cert("127.0.0.1")),
                   replies={"RCPT": "250 2.1.5 OK"}, close_after=("RCPT",))
    v = await run_probe(make_spec(server.port, mode="implicit"), creds(ca))
    assert v.passed, v.message
    assert v.details["relayCheck"] == "passed"
    sent = [t.line for t in v.transcript if t.direction == "c"]
    assert sent[-4:] == ["MAIL FROM:<app@example.test>", "RCPT TO:<app@example.test>",
                         "RSET", "QUIT"]
