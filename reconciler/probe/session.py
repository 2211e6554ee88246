"""One connection attempt of the probe: the stages from DNS to QUIT.

The attempt raises :class:`~reconciler.probe.failure.ProbeFailure` at the first stage
that fails and records everything else (timings, TLS facts, warnings) on the shared
:class:`AttemptState`.  Retries and the implicit-TLS fallback are the runner's business.

Invariants enforced here (guarantees 5 and 6 in docs/architecture.md):

* AUTH is only sent on an encrypted connection unless ``spec.allowPlaintextAuth``; the
  check happens before the first AUTH byte is written;
* with ``startTLS: true`` a missing or refused STARTTLS fails the attempt (a downgrade,
  never a warning);
* the egress policy judges every resolved address, and the socket is connected to that
  exact address (no second DNS lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtplib.errors import (
    SMTPDataError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.esmtp import parse_esmtp_extensions
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX
from aiosmtplib.response import SMTPResponse

from reconciler import catalog
from reconciler.probe import failure as failures
from reconciler.probe import sasl, tlsconfig
from reconciler.probe.egress import EgressPolicy
from reconciler.probe.failure import ProbeFailure, reply_failure
from reconciler.probe.redact import cap
from reconciler.probe.transcript import Transcript
from reconciler.probe.verdict import ProbeCredentials
from reconciler.probe.wire import Wire
from reconciler.resources import ExternalSmtpSpec, format_duration
from reconciler.secret import Secret

Mode = Literal["implicit", "starttls", "none", "fallback"]


@dataclass
class AttemptState:
    """What the runner and the attempts share for one probe."""

    spec: ExternalSmtpSpec
    creds: ProbeCredentials
    policy: EgressPolicy
    transcript: Transcript
    deadline: float  # time.monotonic() value
    send_test_message_to: str | None = None
    stage: str = "resolve"
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    token: Secret | None = None
    mode: str = ""  # the TLS mode of the current attempt (implicit|starttls|none|fallback)
    token_refreshed: bool = False
    deadline_bound: bool = False
    reconnected: bool = False  # the one reconnect after a token rejection was used
    pipelined_auth_refused: bool = False  # the server objected: no pipelined AUTH again

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, cap: float | None = None) -> float:
        """The time budget of the next step: the read timeout, or what is left of the
        deadline when that is less.

        The read timeout (half the total, at least 1 s) is JavaMail's ``timeout``: one
        silent reply ends the test as ``ReadTimeout``.  When instead the deadline cuts a
        step short after the test already made progress, the reason is
        ``DeadlineExceeded`` (a slow server, not a silent one); ``deadline_bound`` tells
        which of the two limits applied to the last step.
        """
        total = float(self.spec.connection_test.timeout_seconds)
        left = self.remaining()
        if left <= 0.01:
            raise failures.deadline_exceeded(self.stage, total, self.stage_seconds)
        limit = max(1.0, total / 2) if cap is None else cap
        self.deadline_bound = left < limit and (total - left) > 0.25 * total
        return min(left, limit)

    @contextlib.contextmanager
    def at(self, stage: str) -> Iterator[None]:
        self.stage = stage
        start = time.monotonic()
        try:
            yield
        finally:
            self.stage_seconds[stage] = round(
                self.stage_seconds.get(stage, 0.0) + time.monotonic() - start, 6)

    def warn(self, reason: str) -> None:
        assert catalog.get(reason).kind == "warning"
        if reason not in self.warnings:
            self.warnings.append(reason)


def _io_failure(stage: str, exc: BaseException, state: AttemptState, budget: float) -> ProbeFailure:
    """A transport-level exception during ``stage`` as a failure (no secret in it)."""
    redact = state.transcript.redact
    if isinstance(exc, ssl.SSLCertVerificationError):
        problem = tlsconfig.certificate_problem(exc)
        state.details["certificateProblem"] = problem
        name = tlsconfig.server_name(state.spec)
        return ProbeFailure(stage, "CertificateInvalid",
                            tlsconfig.describe_certificate_problem(problem, exc, name))
    if isinstance(exc, ssl.SSLError):
        return failures.tls_failure(stage, exc, implicit=stage == "tls")
    if isinstance(exc, SMTPServerDisconnected) and "upgrading" in str(exc):
        return ProbeFailure(stage, "TLSHandshakeFailed",
                            "the connection was closed during the TLS handshake")
    if isinstance(exc, (SMTPTimeoutError, TimeoutError)):
        state.transcript.note(f"no complete reply within {format_duration(budget)}")
        total = float(state.spec.connection_test.timeout_seconds)
        if state.deadline_bound:
            return failures.deadline_exceeded(stage, total, state.stage_seconds)
        return failures.read_timeout(stage, budget, total)
    if isinstance(exc, SMTPServerDisconnected):
        state.transcript.note("connection closed by the server")
        return ProbeFailure(stage, "ProtocolError",
                            f"the server closed the connection at stage {stage}")
    if isinstance(exc, SMTPResponseException):
        text = cap(redact(exc.message, one_line=True), 200, redact)
        state.transcript.note(f"unreadable reply: {text}")
        return ProbeFailure(stage, "ProtocolError", f"unreadable reply at stage {stage}: {text}")
    if isinstance(exc, (ConnectionError, OSError)):
        state.transcript.note("connection lost")
        return ProbeFailure(stage, "ProtocolError",
                            f"the connection was lost at stage {stage} ({type(exc).__name__})")
    raise exc


@contextlib.contextmanager
def _guard(state: AttemptState, budget: float) -> Iterator[None]:
    """Turn transport exceptions raised in the block into ProbeFailure."""
    try:
        yield
    except ProbeFailure:
        raise
    except (SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError, TimeoutError,
            ssl.SSLError, OSError) as exc:
        raise _io_failure(state.stage, exc, state, budget) from None


def _format_peer(sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _resolve(state: AttemptState, host: str, port: int) -> list[tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    budget = state.timeout(10.0)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:
        infos: list[tuple[Any, ...]]
        if literal is not None:  # an IP literal needs no resolver (and no thread hop)
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            sockaddr = (host, port, 0, 0) if literal.version == 6 else (host, port)
            infos = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
        else:
            async with asyncio.timeout(budget):  # not wait_for: see _token
                resolved = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  proto=socket.IPPROTO_TCP)
            infos = [tuple(info) for info in resolved]
    except socket.gaierror as exc:
        raise failures.resolve_failure(host, exc) from None
    except TimeoutError:
        raise ProbeFailure("resolve", "UnknownHost", f"DNS lookup of {host!r} timed out",
                           timeout=True) from None
    seen: list[tuple[Any, ...]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        entry = (family, *sockaddr)
        if entry not in seen:
            seen.append(entry)
    allowed = [e for e in seen if state.policy.permits(e[1])]
    if not allowed:
        why = state.policy.refusal(seen[0][1]) if seen else "no address"
        raise ProbeFailure("resolve", "EgressDenied", f"{host!r} resolves to {seen[0][1]}: {why}"
                           if seen else f"{host!r} has no address")
    state.details["addresses"] = [e[1] for e in allowed][:8]
    return allowed


async def _connect(state: AttemptState, addresses: list[tuple[Any, ...]]) -> socket.socket:
    """Connect to the first address that accepts (in resolver order)."""
    loop = asyncio.get_running_loop()
    last: ProbeFailure | None = None
    for family, *sockaddr in addresses[:4]:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        budget = state.timeout(max(1.0, state.spec.connection_test.timeout_seconds / 2))
        peer = _format_peer(tuple(sockaddr))
        total = float(state.spec.connection_test.timeout_seconds)
        try:
            async with asyncio.timeout(budget):  # not wait_for: see _token
                await loop.sock_connect(sock, tuple(sockaddr))
        except TimeoutError:
            sock.close()
            last = failures.connect_timeout(state.spec.host, sockaddr[0], sockaddr[1], budget,
                                           total)
            break  # the budget is spent; do not start the next address
        except OSError as exc:
            sock.close()
            last = failures.connect_failure(state.spec.host, sockaddr[0], sockaddr[1], exc)
            continue
        except BaseException:
            sock.close()
            raise
        state.details["peer"] = peer
        return sock
    assert last is not None
    raise last


async def _ehlo(state: AttemptState, wire: Wire, local_name: str) -> dict[str, str]:
    """EHLO (HELO when the server does not know EHLO); returns the extensions."""
    budget = state.timeout()
    with _guard(state, budget):
        reply = await wire.command(f"EHLO {local_name}", budget)
        if reply.code in (500, 502):
            reply = await wire.command(f"HELO {local_name}", state.timeout())
            if reply.code == 250:
                state.details["esmtp"] = False
                return {}
        if reply.code != 250:
            raise reply_failure("ehlo", reply.code, reply.message, state.transcript.redact)
    extensions, auth = parse_esmtp_extensions(reply.message)
    extensions["auth"] = " ".join(m.upper() for m in auth)
    state.details["esmtp"] = True
    return extensions


def _local_name(sock_name: Any) -> str:
    """An address literal of our end (RFC 5321 4.1.3): no FQDN lookup, always valid."""
    if isinstance(sock_name, tuple) and sock_name:
        host = str(sock_name[0])
        return f"[IPv6:{host}]" if ":" in host else f"[{host}]"
    return "[127.0.0.1]"


def _record_tls(state: AttemptState, wire: Wire) -> None:
    obj = wire.transport_info("ssl_object")
    if obj is not None:
        state.details["tlsVersion"] = obj.version()
        cipher = obj.cipher()
        state.details["tlsCipher"] = cipher[0] if cipher else None
        not_after = tlsconfig.certificate_not_after(obj)
        if not_after is not None:
            state.details["certificateNotAfter"] = not_after
    if not state.spec.tls.verify:
        state.warn("TLSVerificationDisabled")


async def run_attempt(state: AttemptState, mode: Mode, port: int) -> None:
    """One connection: raise ProbeFailure, or return when every check passed."""
    spec = state.spec
    transcript = state.transcript
    tls_ctx = tlsconfig.client_context(spec, state.creds.ca_bundle_pem)
    sni = tlsconfig.server_name(spec)
    state.details["tlsMode"] = "implicit" if mode == "implicit" else "none"
    state.details["tlsVersion"] = None
    state.mode = mode

    with state.at("resolve"):
        addresses = await _resolve(state, spec.host, port)
    with state.at("connect"):
        sock = await _connect(state, addresses)
    wire = Wire(transcript)
    try:
        stage = "tls" if mode == "implicit" else "connect"
        with state.at(stage):
            budget = state.timeout()
            try:
                await wire.open(sock, tls=tls_ctx if mode == "implicit" else None,
                                server_hostname=sni, timeout=budget)
            except TimeoutError:
                sock.close()
                raise failures.read_timeout(
                    stage, budget, float(spec.connection_test.timeout_seconds),
                    handshake=True) from None
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                if isinstance(exc, ssl.SSLError) or mode == "implicit":
                    failure = _io_failure(stage, exc, state, budget)
                    if failure.reason == "ProtocolError":
                        failure = ProbeFailure(stage, "TLSHandshakeFailed",
                                               "the connection was closed during the TLS "
                                               "handshake")
                    raise failure from None
                raise _io_failure(stage, exc, state, budget) from None
        if mode == "implicit":
            _record_tls(state, wire)

        with state.at("banner"):
            budget = state.timeout()
            with _guard(state, budget):
                banner = await wire.read_reply(budget)
            if banner.code != 220:
                raise reply_failure("banner", banner.code, banner.message, transcript.redact)

        local_name = _local_name(wire.transport_info("sockname"))
        with state.at("ehlo"):
            extensions = await _ehlo(state, wire, local_name)

        want_tls = mode == "starttls" or (mode == "fallback" and "starttls" in extensions)
        if want_tls:
            with state.at("starttls"):
                if "starttls" not in extensions:
                    raise ProbeFailure("starttls", "StartTLSUnavailable",
                                       "the server did not advertise STARTTLS; continuing in "
                                       "plaintext would be a downgrade")
                budget = state.timeout()
                try:
                    await wire.starttls(tls_ctx, sni, budget)
                except SMTPResponseException as exc:
                    if exc.code > 0:  # a reply other than 220: refused
                        raise reply_failure("starttls", exc.code, exc.message,
                                            transcript.redact) from None
                    raise _io_failure("starttls", exc, state, budget) from None
                except (SMTPServerDisconnected, SMTPTimeoutError, TimeoutError, ssl.SSLError,
                        OSError) as exc:
                    raise _io_failure("starttls", exc, state, budget) from None
            state.details["tlsMode"] = "starttls"
            _record_tls(state, wire)
            with state.at("ehlo"):
                extensions = await _ehlo(state, wire, local_name)

        state.details["pipelining"] = "pipelining" in extensions
        state.details["authPipelined"] = False
        mech = _auth_mechanism(state, wire, extensions)
        if mech is not None and _may_pipeline_auth(state, mech, extensions):
            quit_sent = await _auth_pipelined(state, wire)
        else:
            await _authenticate(state, wire, mech)
            quit_sent = await _relay_check(state, wire, extensions)

        with state.at("quit"):
            if quit_sent:
                return
            try:
                await wire.command("QUIT", state.timeout(5.0))
            except (SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError, OSError):
                pass  # every check passed; a server that hangs up without 221 is fine
    finally:
        # After open() the transport owns the socket and closes it on its own schedule;
        # closing the socket object here too would free the descriptor under it.
        if wire.transport is None:
            with contextlib.suppress(OSError):
                sock.close()
        await wire.aclose()


# --- AUTH -----------------------------------------------------------------------------


def _auth_mechanism(state: AttemptState, wire: Wire, extensions: dict[str, str]) -> str | None:
    """The SASL mechanism AUTH will use (None: the resource has no credentials), after the
    checks that must pass before the first AUTH byte is written."""
    spec = state.spec
    state.details["mechanism"] = None
    if spec.authentication == "None":
        return None
    with state.at("auth"):
        if not wire.encrypted:
            if state.mode == "fallback":
                # The fallback is a downgrade anyone on the path can trigger (reset the TLS
                # port): it never carries credentials in clear, allowPlaintextAuth or not.
                raise ProbeFailure("auth", "PlaintextAuthRefused",
                                   "the implicit-TLS fallback connection is not encrypted and "
                                   "the server offers no STARTTLS; credentials are never sent "
                                   "over a fallback (a downgrade an attacker can trigger by "
                                   "resetting the TLS port), whatever spec.allowPlaintextAuth "
                                   "says; no credentials were sent")
            if not spec.allow_plaintext_auth:
                hint = (" although the server offers STARTTLS (set spec.startTLS: true)"
                        if "starttls" in extensions else "")
                raise ProbeFailure("auth", "PlaintextAuthRefused",
                                   f"the connection is not encrypted{hint}; no credentials "
                                   "were sent")
        advertised = extensions.get("auth", "").split()
        mech = sasl.choose_mechanism(spec.authentication, advertised)
        if mech is None:
            offered = " ".join(advertised) or "no AUTH mechanism"
            offered = cap(state.transcript.redact(offered, one_line=True), 200)
            raise ProbeFailure("auth", "AuthNotSupported", f"the server offers {offered}")
        state.details["mechanism"] = mech
        return mech


async def _authenticate(state: AttemptState, wire: Wire, mech: str | None) -> None:
    if mech is None:
        return
    with state.at("auth"):
        username = state.spec.username or ""
        if state.spec.authentication == "UsernamePassword":
            await _auth_password(state, wire, mech, username)
        else:
            await _auth_oauth(state, wire, mech, username)


def _plaintext_warning(state: AttemptState, wire: Wire) -> None:
    """``PlaintextAuthUsed`` exactly when AUTH is about to go out unencrypted."""
    if not wire.encrypted:
        state.warn("PlaintextAuthUsed")


async def _auth_password(state: AttemptState, wire: Wire, mech: str, username: str) -> None:
    password = state.creds.password
    if password is None:
        raise ProbeFailure("auth", "AuthenticationFailed", "no password was resolved")
    _plaintext_warning(state, wire)
    budget = state.timeout()
    with _guard(state, budget):
        outcome = await sasl.auth_password(wire, mech, username, password, budget)
    if outcome.final.code != 235:
        raise reply_failure("auth", outcome.final.code, outcome.final.message,
                            state.transcript.redact)


async def _token(state: AttemptState, force: bool) -> Secret:
    provider = state.creds.token_provider
    if provider is None:
        raise ProbeFailure("credentials", "OAuth2ProviderNotReady", "no access token provider")
    try:
        # asyncio.timeout, never wait_for: on Python 3.11 wait_for drops a cancellation
        # that arrives together with the result, and the probe would go on talking to
        # the server after its caller cancelled it (tests/test_probe_faults.py).
        async with asyncio.timeout(state.timeout()):
            token = await provider(force)
    except TimeoutError:
        raise ProbeFailure("credentials", "OAuth2TokenEndpointUnavailable",
                           "the access token was not obtained in time", timeout=True) from None
    except Exception as exc:  # noqa: BLE001 - the credentials layer raises CredentialError
        reason = getattr(exc, "reason", None)
        message = getattr(exc, "message", None)
        if not isinstance(reason, str) or reason not in catalog.CATALOG:
            reason = "OAuth2TokenEndpointUnavailable"
        detail = state.transcript.redact(message, one_line=True) if isinstance(message, str) \
            else \
            type(exc).__name__
        raise ProbeFailure("credentials", reason, detail) from None
    state.transcript.redact.add(token)
    state.token = token
    return token


def _token_rejected(reply: SMTPResponse) -> bool:
    return 500 <= reply.code < 600 and reply.code not in (500, 502, 504, 530, 538)


async def _auth_oauth(state: AttemptState, wire: Wire, mech: str, username: str) -> None:
    """XOAUTH2/OAUTHBEARER; a rejected token is refreshed once and AUTH retried."""
    token = state.token or await _token(state, force=state.token_refreshed)
    _plaintext_warning(state, wire)
    retry = False
    while True:
        budget = state.timeout()
        try:
            with _guard(state, budget):
                outcome = await sasl.auth_oauth(wire, mech, username, token, budget)
        except ProbeFailure as lost:
            # The server hung up after rejecting the first token (some do): the runner
            # reconnects once with the fresh token.
            if retry and lost.reason == "ProtocolError":
                lost.token_rejected = True
            raise
        final = outcome.final
        if final.code == 235:
            return
        if outcome.oauth_error:
            state.details["oauthError"] = {
                k: cap(state.transcript.redact(str(v), one_line=True), 200)
                for k, v in outcome.oauth_error.items() if k in ("status", "scope", "schemes")}
        rejected = _token_rejected(final)
        if rejected and not state.token_refreshed:
            state.token_refreshed = True
            state.transcript.note("token rejected; fetching a fresh one")
            token = await _token(state, force=True)
            retry = True
            if wire.protocol is not None and wire.protocol.is_connected:
                continue
            raise ProbeFailure("auth", "ProtocolError",
                               "the server closed the connection after rejecting the token",
                               token_rejected=True)
        failure = reply_failure("auth", final.code, final.message, state.transcript.redact,
                                oauth=True, token_rejected=rejected)
        extra = sasl.describe_oauth_error(state.details.get("oauthError"))
        if extra:
            failure.detail = f"{failure.detail}; {extra}"
        raise failure


# --- pipelined AUTH (opt-in: connectionTest.pipelineAuth) -----------------------------

# What servers say when they object to input that arrived before their reply: Exim's
# "554 SMTP synchronization error", Postfix's "554 5.5.0 Error: SMTP protocol
# synchronization" (smtpd_forbid_unauth_pipelining) and "503 5.5.0 ... Improper use of
# SMTP command pipelining" (reject_unauth_pipelining).
_OBJECTION = re.compile(r"synchroni[sz]|pipelin", re.IGNORECASE)
_EARLY_INPUT_WAIT = 5.0  # seconds for a reply to a command pipelined after AUTH


class PipelinedAuthRefused(ProbeFailure):
    """The server objected to the pipelined AUTH group; the runner tests again at once
    without pipelining it (on a new connection)."""

    def __init__(self, detail: str) -> None:
        super().__init__("auth", "ProtocolError", detail)


def _may_pipeline_auth(state: AttemptState, mech: str, extensions: dict[str, str]) -> bool:
    """RFC 4954 section 4: AUTH must end a pipelined group, except with an initial response
    for a mechanism in which the client speaks first, that completes in one round trip
    and negotiates no security layer - PLAIN (and EXTERNAL).  Not XOAUTH2/OAUTHBEARER: a
    rejected token gets a challenge the client must answer, a second round trip whose
    answer would be the pipelined MAIL FROM.  Not LOGIN or CRAM-MD5 (challenges)."""
    return (state.spec.connection_test.pipeline_auth and not state.pipelined_auth_refused
            and mech == "PLAIN" and "pipelining" in extensions
            and state.send_test_message_to is None)


def _objection(reply: SMTPResponse) -> bool:
    return reply.code >= 400 and bool(_OBJECTION.search(reply.message))


async def _auth_pipelined(state: AttemptState, wire: Wire) -> bool:
    """``AUTH PLAIN <initial response>`` and the rest of the test in one write: ``MAIL``,
    ``RCPT``, ``RSET``, ``QUIT`` (or only ``QUIT`` without a relay check).  Returns True
    (QUIT was sent).

    Every reply is checked in order, as RFC 2920 demands: a rejected AUTH is the verdict
    (the replies to the commands after it are read but do not count, and nothing is
    retried: a second wrong password is a second failed login).  A server that objects to
    the early input - a synchronization or pipelining error, or hanging up before it
    answered the checks - raises :class:`PipelinedAuthRefused`.
    """
    username = state.spec.username or ""
    password = state.creds.password
    if password is None:
        raise ProbeFailure("auth", "AuthenticationFailed", "no password was resolved")
    line = sasl.plain_initial_line(wire, username, password)
    if line is None:  # too long for an initial response: one command at a time
        await _authenticate(state, wire, "PLAIN")
        return False
    commands = _relay_commands(state)
    tail = [*commands, "RSET", "QUIT"] if commands is not None else ["QUIT"]
    redact = state.transcript.redact
    _plaintext_warning(state, wire)
    state.details["authPipelined"] = True
    try:
        with state.at("auth"):
            budget = state.timeout()
            with _guard(state, budget):
                wire.send_group([line, *tail], display=["AUTH PLAIN ******"])
                try:
                    auth = await wire.next_reply(budget)
                except (SMTPServerDisconnected, ConnectionError) as exc:
                    raise PipelinedAuthRefused(
                        "the server closed the connection without answering the pipelined "
                        "AUTH") from exc
            if _objection(auth):
                raise PipelinedAuthRefused(
                    f"the server refused the pipelined AUTH: {auth.code} "
                    f"{cap(redact(auth.message, one_line=True), 200, redact)}")
            if auth.code != 235:
                raise reply_failure("auth", auth.code, auth.message, redact)
        if commands is None:
            with state.at("quit"), contextlib.suppress(
                    SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError, OSError):
                await wire.next_reply(state.timeout(5.0))
            return True
        # A server may also discard input that arrived before its AUTH reply (as servers
        # do after STARTTLS): the replies to the commands after AUTH never come.  Waiting
        # the whole read timeout for them would spend the budget of the retry.
        total = float(state.spec.connection_test.timeout_seconds)
        wait = min(_EARLY_INPUT_WAIT, max(1.0, total / 2))
        with state.at("mail_from"):
            for stage in ("mail_from", "rcpt_to"):
                what = stage.upper().replace("_", " ")
                budget = state.timeout(wait)
                with _guard(state, budget):
                    try:
                        reply = await wire.next_reply(budget)
                    except (SMTPServerDisconnected, ConnectionError) as exc:
                        raise PipelinedAuthRefused(
                            f"the server closed the connection after the pipelined AUTH "
                            f"passed, before it answered {what}") from exc
                    except SMTPTimeoutError as exc:
                        raise PipelinedAuthRefused(
                            f"the pipelined AUTH passed, but {what} got no reply within "
                            f"{format_duration(budget)} (input sent before the AUTH reply "
                            f"was discarded?)") from exc
                if _objection(reply):
                    raise PipelinedAuthRefused(
                        f"the server refused the commands pipelined after AUTH: {reply.code} "
                        f"{cap(redact(reply.message, one_line=True), 200, redact)}")
                if reply.code // 100 != 2:
                    raise reply_failure(stage, reply.code, reply.message, redact)
            for _ in ("RSET", "QUIT"):  # optional: the checks are answered
                try:
                    reply = await wire.next_reply(state.timeout(5.0))
                except (SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError,
                        OSError):
                    break
                if reply.code == 421:
                    break
        state.details["relayCheck"] = "passed"
        return True
    finally:
        wire.end_group()


# --- relay check ----------------------------------------------------------------------


def _check_address(address: str) -> str:
    if COMMAND_INJECTION_REGEX.search(address.encode()) or any(c in address for c in "<> "):
        raise ProbeFailure("mail_from", "InvalidSpec", "the address contains invalid characters")
    return address


def _relay_commands(state: AttemptState) -> tuple[str, str] | None:
    """``MAIL FROM`` and ``RCPT TO`` of the relay check, or None when it is skipped (and
    ``details.relayCheck`` says why)."""
    spec = state.spec
    send_to = state.send_test_message_to
    if not spec.connection_test.check_relay and send_to is None:
        state.details["relayCheck"] = "skipped"
        return None
    sender = spec.sender
    if sender is None:
        state.details["relayCheck"] = "skipped: no sender address (spec.from)"
        return None
    recipient = send_to or spec.connection_test.probe_recipient or sender
    return f"MAIL FROM:<{_check_address(sender)}>", f"RCPT TO:<{_check_address(recipient)}>"


async def _relay_check(state: AttemptState, wire: Wire, extensions: dict[str, str]) -> bool:
    """MAIL FROM / RCPT TO / RSET (never DATA unless opted in).  True when QUIT was sent.

    With PIPELINING the whole tail of the dialogue, ``MAIL``, ``RCPT``, ``RSET`` and
    ``QUIT`` (RFC 2920 allows QUIT last in a group), goes out in one write: one round trip
    instead of four.
    """
    send_to = state.send_test_message_to
    commands = _relay_commands(state)
    if commands is None:
        return False
    mail, rcpt = commands
    sender = state.spec.sender
    assert sender is not None
    redact = state.transcript.redact
    budget = state.timeout()
    if send_to is None and "pipelining" in extensions:
        with state.at("mail_from"), _guard(state, budget):
            replies = await wire.pipeline([mail, rcpt, "RSET", "QUIT"], budget, required=2)
        if replies[0].code // 100 != 2:
            raise reply_failure("mail_from", replies[0].code, replies[0].message, redact)
        if len(replies) < 2:
            raise ProbeFailure("rcpt_to", "ProtocolError", "no reply to RCPT TO")
        if replies[1].code // 100 != 2:
            raise reply_failure("rcpt_to", replies[1].code, replies[1].message, redact)
        state.details["relayCheck"] = "passed"
        return True
    with state.at("mail_from"), _guard(state, budget):
        reply = await wire.command(mail, budget)
    if reply.code // 100 != 2:
        raise reply_failure("mail_from", reply.code, reply.message, redact)
    with state.at("rcpt_to"), _guard(state, budget):
        reply = await wire.command(rcpt, state.timeout())
    if reply.code // 100 != 2:
        raise reply_failure("rcpt_to", reply.code, reply.message, redact)
    if send_to is None:
        with state.at("rcpt_to"), _guard(state, budget):
            await wire.command("RSET", state.timeout())
        state.details["relayCheck"] = "passed"
        return False
    with state.at("data"):
        await _send_message(state, wire, sender, send_to)
    state.details["relayCheck"] = "passed"
    state.details["testMessageSent"] = True
    return False


async def _send_message(state: AttemptState, wire: Wire, sender: str, to: str) -> None:
    """The opt-in test message (``smtpctl test --send-test-message``)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "smtpctl connection test"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain="smtpctl.invalid")
    msg.set_content("This message was sent by `smtpctl test --send-test-message`.\n"
                    "It confirms that this relay accepts mail from this sender.\n")
    payload = msg.as_bytes()
    budget = state.timeout()
    proto = wire.protocol
    with _guard(state, budget):
        if proto is None:
            raise SMTPServerDisconnected("Connection lost")
        state.transcript.client("DATA")
        state.transcript.client(f"[message of {len(payload)} bytes]")
        try:
            reply = await proto.execute_data_command(payload, timeout=budget)
        except SMTPDataError as exc:
            state.transcript.reply(exc.code, exc.message)
            raise reply_failure("data", exc.code, exc.message, state.transcript.redact) from None
        state.transcript.reply(reply.code, reply.message)
