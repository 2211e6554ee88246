"""A real SMTP relay on loopback (aiosmtpd), for `smtpctl demo` and the test suite.

Why a real server and not a mock: the probe must be proven against a peer that speaks the
wire protocol, negotiates real TLS with real certificates and runs real SASL exchanges.
aiosmtpd does the SMTP work; this module adds what a submission relay needs around it:

* a private certificate authority (``trustme``) and a server certificate for
  ``localhost``, ``127.0.0.1`` and ``::1``;
* three listener modes: ``plain`` (no TLS at all; AUTH is offered in the clear so that
  ``allowPlaintextAuth`` can be tested), ``starttls`` (STARTTLS required before AUTH and
  MAIL, like a port 587 submission service) and ``implicit`` (TLS from the first byte,
  like port 465);
* AUTH PLAIN, LOGIN and CRAM-MD5 checked against :attr:`RelayServer.users`, and the
  OAuth 2.0 mechanisms XOAUTH2 and OAUTHBEARER (RFC 7628) checked by a pluggable token
  validator.  A rejected token gets the failure challenge Google and Dovecot send (a
  base64 JSON ``{"status": "401", ...}``, then ``535 5.7.8`` after the client's empty
  reply), so the probe's challenge handling is exercised for real;
* a relay policy: senders outside :attr:`RelayServer.allowed_senders` get
  ``553 5.7.1`` at MAIL FROM, recipients outside :attr:`RelayServer.allowed_recipients`
  get ``554 5.7.1`` at RCPT TO (the send-as and relay-off cases of the original form);
* optionally, SMTP synchronisation enforced (``enforce_sync``: ``disconnect`` like Exim,
  ``reject`` like Postfix's ``reject_unauth_pipelining``, ``discard``: early input is
  dropped silently) with AUTH always a sync point,
  stricter than RFC 4954 (which lets AUTH PLAIN with an initial response be pipelined);
  :attr:`RelayServer.sync_violations` lists what it caught;
* counters and logs a test can assert on: :attr:`RelayServer.connections`,
  :attr:`RelayServer.auth_attempts` (mechanism, user, success; never a secret) and
  :attr:`RelayServer.messages` (only filled by an explicit DATA, i.e. ``--send-test-message``).

Usage from synchronous code (tests, the demo)::

    relay = RelayServer(mode="starttls", users={"app@example.test": "pw"})
    relay.start()                  # runs in its own thread and event loop
    relay.port, relay.ca_pem       # where to connect, which CA to trust
    relay.tokens["tok"] = "app@example.test"   # accept this OAuth token for that user
    relay.stop()

or as a context manager (``with RelayServer(...) as relay:``).  ``start()`` binds
``127.0.0.1`` on an ephemeral port; ``start()`` after ``stop()`` listens on the same port
again (a relay that went down and comes back: the demo's and tests' fail-back); pass
``ca=`` to share one trustme CA between servers (the token endpoint of the demo uses the
same CA).  The token validator is a callable
``(username, token) -> bool``; by default it accepts exactly the pairs in
:attr:`RelayServer.tokens` (token -> username), which the demo's token endpoint fills.
It runs on the server thread, so it must be thread-safe and must not block for long.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Mode = Literal["plain", "starttls", "implicit"]


class _DropLoginDataDeprecation(logging.Filter):
    """aiosmtpd 1.4 logs a deprecation warning from its own AUTH code path on every
    login (it sets ``Session.login_data`` itself); it is noise for demo users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_DropLoginDataDeprecation())

TokenValidator = Callable[[str, str], bool]

DEFAULT_MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
ALL_MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER")
# What Google (and Dovecot) send as the failure challenge for a rejected token.
OAUTH_SCOPE = "https://mail.example.test/"


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """One AUTH exchange as the server saw it (never holds the credential)."""

    mechanism: str
    username: str
    success: bool
    tls: bool


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class _Handler:
    """aiosmtpd handler: relay policy, OAuth mechanisms, message capture.

    aiosmtpd discovers ``auth_<NAME>`` methods on the handler as extra SASL mechanisms
    (``__`` in the name becomes ``-``), which is how XOAUTH2 and OAUTHBEARER plug in.
    """

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay

    # --- EHLO: advertise PIPELINING (aiosmtpd processes pipelined commands in order) ---
    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.relay.advertise_pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    # --- relay policy ---
    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        if self.relay.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        allowed = self.relay.allowed_senders
        if allowed is not None and address.lower() not in allowed:
            return f"553 5.7.1 <{address}>: Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        allowed = self.relay.allowed_recipients
        if allowed is not None and not _address_allowed(address, allowed):
            return f"554 5.7.1 <{address}>: Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.relay._lock:
            self.relay.messages.append(
                ReceivedMessage(str(envelope.mail_from), tuple(envelope.rcpt_tos), content)
            )
        return "250 2.0.0 OK: queued"

    # --- OAuth 2.0 SASL mechanisms -------------------------------------------------------
    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """``AUTH XOAUTH2 base64("user=" user "\\x01auth=Bearer " token "\\x01\\x01")``."""
        raw = await _initial_response(server, args)
        if raw is None:
            return AuthResult(success=False, handled=True)
        fields = _kv_fields(raw.split(b"\x01"))
        user = fields.get("user", "")
        return await self._check_token(server, "XOAUTH2", user, fields.get("auth", ""))

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 7628: ``base64("n,a=" user "," "\\x01auth=Bearer " token "\\x01\\x01")``."""
        raw = await _initial_response(server, args)
        if raw is None:
            return AuthResult(success=False, handled=True)
        parts = raw.split(b"\x01")
        gs2 = parts[0].decode("utf-8", "replace").split(",")
        user = next((p[2:] for p in gs2 if p.startswith("a=")), "")
        fields = _kv_fields(parts[1:])
        return await self._check_token(server, "OAUTHBEARER", user, fields.get("auth", ""))

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 2195, only offered when a test asks for it (``mechanisms=``)."""
        challenge = f"<{os.urandom(8).hex()}@{server.hostname}>".encode()
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=True)
        user_b, _, digest = answer.rpartition(b" ")
        user = user_b.decode("utf-8", "replace")
        password = self.relay.users.get(user)
        ok = password is not None and hmac.compare_digest(
            hmac.new(password.encode(), challenge, "md5").hexdigest().encode(), digest
        )
        self.relay._record(AuthAttempt("CRAM-MD5", user, ok, _is_tls(server)))
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user_b, b""))
        return AuthResult(success=False, handled=False)

    async def _check_token(self, server: SMTP, mech: str, user: str, auth: str) -> AuthResult:
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        validator = self.relay.token_validator or self.relay._default_token_validator
        try:
            ok = bool(token) and bool(user) and validator(user, token)
        except Exception:  # noqa: BLE001 - a broken validator must not kill the server
            ok = False
        self.relay._record(AuthAttempt(mech, user, ok, _is_tls(server)))
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        # The failure challenge: the client must answer (empty line, or AQ== for
        # OAUTHBEARER) before it gets the final 535.
        error = {"status": "401", "schemes": "bearer", "scope": OAUTH_SCOPE}
        await server.challenge_auth(json.dumps(error).encode())
        await server.push("535 5.7.8 Username and Password not accepted")
        return AuthResult(success=False, handled=True)


async def _initial_response(server: SMTP, args: list[str]) -> bytes | None:
    if len(args) > 1:
        try:
            return base64.b64decode(args[1], validate=True)
        except ValueError:
            await server.push("501 5.5.2 Can't decode base64")
            return None
    answer = await server.challenge_auth(b"")
    return answer if isinstance(answer, bytes) else None


def _kv_fields(parts: Iterable[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.decode("utf-8", "replace").partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def _is_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _address_allowed(address: str, allowed: frozenset[str]) -> bool:
    """``allowed`` holds full addresses or ``@domain`` entries."""
    address = address.lower()
    domain = "@" + address.rpartition("@")[2]
    return address in allowed or domain in allowed


class RelayServer:
    """An aiosmtpd submission relay on 127.0.0.1, started and stopped from sync code.

    See the module docstring for the behaviour.  Attributes a caller may read or change
    while the server runs: ``users`` (login -> password), ``tokens`` (token -> login),
    ``token_validator``, ``allowed_senders``, ``allowed_recipients``, ``auth_required``;
    and read: ``port``, ``host``, ``ca``, ``ca_pem``, ``connections``,
    ``auth_attempts``, ``messages``.
    """

    def __init__(
        self,
        *,
        mode: Mode = "starttls",
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        token_validator: TokenValidator | None = None,
        allowed_senders: Iterable[str] | None = None,
        allowed_recipients: Iterable[str] | None = None,
        auth_required: bool = True,
        mechanisms: Iterable[str] = DEFAULT_MECHANISMS,
        advertise_pipelining: bool = True,
        enforce_sync: Literal["off", "disconnect", "reject", "discard"] = "off",
        ca: trustme.CA | None = None,
        host: str = "127.0.0.1",
        server_hostname: str = "localhost",
        cert_identities: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
        cert_not_after: datetime | None = None,
    ) -> None:
        if mode not in ("plain", "starttls", "implicit"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode: Mode = mode
        self.users: dict[str, str] = dict(users or {})
        self.tokens: dict[str, str] = dict(tokens or {})
        self.token_validator = token_validator
        self.allowed_senders = _lower_set(allowed_senders)
        self.allowed_recipients = _lower_set(allowed_recipients)
        self.auth_required = auth_required
        self.mechanisms = tuple(m.upper() for m in mechanisms)
        unknown = set(self.mechanisms) - set(ALL_MECHANISMS)
        if unknown:
            raise ValueError(f"unsupported mechanisms: {sorted(unknown)}")
        self.advertise_pipelining = advertise_pipelining
        self.enforce_sync = enforce_sync
        self.sync_violations: list[str] = []  # commands followed by early input
        self.ca = ca or trustme.CA()
        self.host = host
        self.server_hostname = server_hostname
        # cert_not_after: a certificate close to expiry, for the expiry warning (tests, demo).
        self._cert = self.ca.issue_cert(*cert_identities, not_after=cert_not_after)
        self._server_ctx: ssl.SSLContext | None = None
        self.port = 0
        self.connections = 0
        self.auth_attempts: list[AuthAttempt] = []
        self.messages: list[ReceivedMessage] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

    # --- public API -------------------------------------------------------------------
    @property
    def ca_pem(self) -> str:
        """The CA certificate (PEM) a client must trust to verify this server."""
        return self.ca.cert_pem.bytes().decode()

    def server_tls_context(self) -> ssl.SSLContext:
        """The server side's context (built once: every connection shares it)."""
        if self._server_ctx is None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._cert.configure_cert(ctx)
            self._server_ctx = ctx
        return self._server_ctx

    def start(self) -> RelayServer:
        if self._thread is not None:
            raise RuntimeError("RelayServer already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(self._listen(loop))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - re-raised by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"relay-{self.mode}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("RelayServer did not start within 10 s")
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for proto in list(self._protocols):
                if proto.transport is not None:
                    proto.transport.close()
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()
            loop.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------
    def _record(self, attempt: AuthAttempt) -> None:
        with self._lock:
            self.auth_attempts.append(attempt)

    def _default_token_validator(self, user: str, token: str) -> bool:
        expected = self.tokens.get(token)
        return expected is not None and expected.lower() == user.lower()

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.users.get(user)
        ok = expected is not None and hmac.compare_digest(
            expected.encode(), auth_data.password
        )
        self._record(AuthAttempt(mechanism, user, ok, _is_tls(server)))
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def _make_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        with self._lock:
            self.connections += 1
        excluded = [m for m in ALL_MECHANISMS if m not in self.mechanisms]
        extra: dict[str, Any] = {}
        cls: type[SMTP] = SMTP
        if self.enforce_sync != "off":
            cls, extra = _SyncEnforcingSMTP, {"relay": self}
        proto = cls(
            _Handler(self),
            hostname=self.server_hostname,
            tls_context=self.server_tls_context() if self.mode == "starttls" else None,
            require_starttls=self.mode == "starttls",
            # Implicit TLS: the whole listener is TLS, but aiosmtpd only knows about
            # STARTTLS, so its "AUTH needs TLS" check is switched off there.
            auth_require_tls=self.mode == "starttls",
            auth_exclude_mechanism=excluded,
            authenticator=self._authenticator,
            timeout=30,
            loop=loop,
            **extra,
        )
        self._protocols = [p for p in self._protocols if p.transport is not None]
        self._protocols.append(proto)
        return proto

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> asyncio.Server:
        ssl_ctx = self.server_tls_context() if self.mode == "implicit" else None
        return await loop.create_server(
            # 0 the first time (ephemeral); a restart after stop() takes the same port.
            lambda: self._make_protocol(loop), host=self.host, port=self.port, ssl=ssl_ctx
        )


# Commands after which a client must wait for the reply (RFC 2920 section 3.1), read
# strictly: AUTH is one of them here, without RFC 4954's exception for AUTH PLAIN with an
# initial response - the strictest server a pipelining client may meet.
SYNC_POINTS = frozenset({"EHLO", "HELO", "STARTTLS", "AUTH", "DATA", "NOOP", "VRFY", "EXPN"})


class _SyncEnforcingSMTP(SMTP):
    """aiosmtpd that enforces SMTP synchronisation, like Exim's ``smtp_enforce_sync``:
    input that arrived after a command of :data:`SYNC_POINTS`, before its reply, is a
    protocol violation.  ``disconnect``: ``554 5.5.0 SMTP synchronization error`` instead
    of the reply, and the connection is closed (Exim; Postfix's
    ``smtpd_forbid_unauth_pipelining``).  ``reject``: the command is served, but every
    later RCPT TO gets ``503 5.5.0 ... Improper use of SMTP command pipelining`` (Postfix's
    ``reject_unauth_pipelining`` as a recipient restriction).  ``discard``: the early input
    is dropped without a word (what servers do with input sent before STARTTLS)."""

    def __init__(self, *args: Any, relay: RelayServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._relay = relay
        self._improper = False

    async def _in_sync(self, command: str) -> bool:
        reader = self._reader
        if command not in SYNC_POINTS or not reader._buffer:  # type: ignore[attr-defined]
            return True
        with self._relay._lock:
            self._relay.sync_violations.append(command)
        if self._relay.enforce_sync == "reject":
            self._improper = True
            return True
        if self._relay.enforce_sync == "discard":
            reader._buffer.clear()  # type: ignore[attr-defined]  # silently dropped
            return True
        reader._buffer.clear()  # type: ignore[attr-defined]  # nothing after it is served
        await self.push("554 5.5.0 SMTP synchronization error")
        if self.transport is not None:
            self.transport.close()
        return False

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._in_sync("EHLO"):
            await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._in_sync("HELO"):
            await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if await self._in_sync("STARTTLS"):
            await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if await self._in_sync("AUTH"):
            await super().smtp_AUTH(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self._in_sync("DATA"):
            await super().smtp_DATA(arg)

    async def smtp_NOOP(self, arg: str) -> None:
        if await self._in_sync("NOOP"):
            await super().smtp_NOOP(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self._improper:
            await self.push(f"503 5.5.0 {arg or ''}: Recipient address rejected: Improper use "
                            "of SMTP command pipelining")
            return
        await super().smtp_RCPT(arg)


def _lower_set(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(v.lower() for v in values)
