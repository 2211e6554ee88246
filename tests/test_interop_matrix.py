"""The interop matrix: our probe and swaks, cell by cell, against real Postfix + Dovecot.

One table (:data:`CELLS`) drives three things, so ``docs/interop.md`` cannot drift
silently:

* ``test_cell[...]`` runs the probe *and* swaks on each cell against the live peer and
  asserts both verdicts equal the table's expectations;
* ``test_interop_doc_is_current`` asserts the table in ``docs/interop.md`` is exactly
  :func:`render` of the expectations (so the doc says what the tests check);
* ``python -m tests.test_interop_matrix [--write]`` runs every cell against a fresh peer,
  prints the *observed* matrix, reports cells that differ from the expectations (exit 1)
  and with ``--write`` rewrites the block in ``docs/interop.md`` from the observations.

Where the probe's behaviour today is known to be wrong, the cell carries the verdict it
should give in ``want_probe`` as well: ``test_cell_meets_issue[...]`` is a strict xfail
on it, so fixing the probe turns it into a failure that asks for the table (and the doc)
to be updated.  ``test_interop_prose_agrees_with_the_table`` checks the doc's per-cell
bullets against the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from reconciler.probe import ProbeCredentials, Verdict, run_probe
from reconciler.resources import IMPLICIT_TLS_CLASS, ExternalSmtpSpec
from reconciler.secret import Secret
from tests.support import canary, peers
from tests.support.canary import assert_no_canary
from tests.support.postfix import (
    JavaMailResult,
    PostfixPeer,
    SwaksResult,
    assert_secret_absent,
    javamail_skip_reason,
    postfix_peer,
    run_javamail,
    run_swaks,
    start_peer,
    swaks_skip_reason,
)
from tests.support.tcp_proxy import Connection, TcpProxy

__all__ = ["postfix_peer"]  # the session fixture, imported for pytest
pytestmark = pytest.mark.postfix

DOC = Path(__file__).resolve().parent.parent / "docs" / "interop.md"
BEGIN = "<!-- interop-matrix:begin (generated: python -m tests.test_interop_matrix --write) -->"
END = "<!-- interop-matrix:end -->"

Creds = Literal["password", "wrong_password", "token", "bad_token", "none", "password_no_ca"]
SpecFn = Callable[[PostfixPeer], dict[str, Any]]
SwaksFn = Callable[[PostfixPeer], dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    id: str
    key: str  # the peer listener (tests.support.postfix.LISTENERS) the cell connects to
    listener: str  # what the Postfix listener offers
    client: str  # how the resource (and swaks) connect
    auth: str
    spec: SpecFn  # overrides on _base_spec
    creds: Creds
    swaks: SwaksFn | None  # None: swaks cannot do this cell ("n/a")
    expect_probe: str
    expect_swaks: str
    want_probe: str | None = None  # the verdict the probe should give, where it differs today
    note: str = ""


_SF = {"class": IMPLICIT_TLS_CLASS, "fallback": False}
_PIPELINE = {"timeoutSeconds": 10, "pipelineAuth": True}


def _oauth(port_name: str) -> SpecFn:
    return lambda p: {"port": p.ports[port_name], "authentication": "OAuth2",
                      "passwordFrom": None, "oauth2ProviderRef": {"name": "interop"}}


def _sw(port_name: str, tls: str, **kw: Any) -> SwaksFn:
    return lambda p: {"port": p.ports[port_name], "tls": tls, **kw}


CELLS: tuple[Cell, ...] = (
    Cell("starttls-plain", "starttls", "STARTTLS required", "startTLS: true", "PLAIN",
         lambda p: {}, "password", _sw("starttls", "starttls", auth="PLAIN"),
         "passed via PLAIN", "passed"),
    Cell("starttls-login", "login_only", "STARTTLS required, AUTH LOGIN only",
         "startTLS: true", "LOGIN",
         lambda p: {"port": p.ports["login_only"]}, "password",
         _sw("login_only", "starttls", auth="LOGIN"), "passed via LOGIN", "passed"),
    Cell("starttls-cram-md5", "cram_md5_only", "STARTTLS required, AUTH CRAM-MD5 only",
         "startTLS: true", "CRAM-MD5",
         lambda p: {"port": p.ports["cram_md5_only"]}, "password",
         _sw("cram_md5_only", "starttls", auth="CRAM-MD5"), "passed via CRAM-MD5", "passed"),
    Cell("implicit-plain", "implicit", "implicit TLS (wrappermode)", "socketFactory SSL", "PLAIN",
         lambda p: {"socketFactory": {**_SF, "port": p.implicit_port}}, "password",
         _sw("implicit", "implicit", auth="PLAIN"), "passed via PLAIN", "passed"),
    Cell("wrong-password", "starttls", "STARTTLS required", "startTLS: true",
         "PLAIN, wrong password",
         lambda p: {}, "wrong_password", _sw("starttls", "starttls", auth="PLAIN"),
         "AuthenticationFailed at auth", "AUTH failed (exit 28)"),
    Cell("send-as", "starttls", "STARTTLS required, sender login maps",
         "startTLS: true, from: not owned",
         "PLAIN", lambda p: {"from": p.other_sender}, "password",
         _sw("starttls", "starttls", auth="PLAIN", sender="OTHER"),
         "SenderRejected at rcpt_to", "RCPT TO rejected (exit 24)",
         note="Postfix (smtpd_delay_reject=yes) answers `553 5.7.1 Sender address rejected` "
              "at RCPT TO, not MAIL FROM; the probe reads the reply text"),
    Cell("xoauth2", "xoauth2_only", "STARTTLS required, XOAUTH2 only", "startTLS: true", "XOAUTH2",
         _oauth("xoauth2_only"), "token", None, "passed via XOAUTH2", "n/a (no XOAUTH2)"),
    Cell("oauthbearer", "oauthbearer_only", "STARTTLS required, OAUTHBEARER only", "startTLS: true",
         "OAUTHBEARER", _oauth("oauthbearer_only"), "token", None, "passed via OAUTHBEARER",
         "n/a (no OAUTHBEARER)"),
    Cell("oauth-choice", "starttls", "STARTTLS required, all mechanisms", "startTLS: true",
         "OAuth2", _oauth("starttls"), "token", None, "passed via XOAUTH2",
         "n/a (no OAuth)"),
    Cell("xoauth2-bad", "xoauth2_only", "STARTTLS required, XOAUTH2 only", "startTLS: true",
         "XOAUTH2, rejected token", _oauth("xoauth2_only"), "bad_token", None,
         "OAuth2AuthenticationFailed at auth", "n/a (no XOAUTH2)"),
    Cell("oauthbearer-bad", "oauthbearer_only", "STARTTLS required, OAUTHBEARER only",
         "startTLS: true",
         "OAUTHBEARER, rejected token", _oauth("oauthbearer_only"), "bad_token", None,
         "OAuth2AuthenticationFailed at auth", "n/a (no OAUTHBEARER)"),
    Cell("downgrade", "plain", "plain, no STARTTLS, AUTH offered", "startTLS: true", "PLAIN",
         lambda p: {"port": p.plain_port}, "password", _sw("plain", "starttls", auth="PLAIN"),
         "StartTLSUnavailable at starttls", "TLS failed (exit 29)",
         note="JavaMail's `starttls.enable` is opportunistic: it continues in plaintext and "
              "sends the password; the probe sends no AUTH byte (asserted on the wire)"),
    Cell("plaintext-auth", "plain", "plain, no STARTTLS, AUTH offered", "startTLS: false", "PLAIN",
         lambda p: {"port": p.plain_port, "startTLS": False}, "password",
         _sw("plain", "none", auth="PLAIN"), "PlaintextAuthRefused at auth",
         "passed (AUTH in cleartext)",
         note="swaks and JavaMail send the password in the clear; the probe refuses to"),
    Cell("plaintext-optin", "plain", "plain, no STARTTLS, AUTH offered",
         "startTLS: false, allowPlaintextAuth: true", "PLAIN",
         lambda p: {"port": p.plain_port, "startTLS": False, "allowPlaintextAuth": True},
         "password", _sw("plain", "none", auth="PLAIN"),
         "passed via PLAIN (warning: PlaintextAuthUsed)", "passed (AUTH in cleartext)"),
    Cell("no-auth", "plain", "plain, relay only after AUTH", "startTLS: false", "None",
         lambda p: {"port": p.plain_port, "startTLS": False, "authentication": "None",
                    "passwordFrom": None, "username": None, "from": p.other_sender},
         "none", _sw("plain", "none", sender="OTHER"),
         "RelayDenied at rcpt_to", "RCPT TO rejected (exit 24)"),
    Cell("no-auth-offered", "no_sasl", "STARTTLS required, no AUTH at all", "startTLS: true",
         "PLAIN", lambda p: {"port": p.ports["no_sasl"]}, "password",
         _sw("no_sasl", "starttls", auth="PLAIN"),
         "AuthNotSupported at auth", "AUTH failed (exit 28)",
         note="JavaMail skips AUTH when none is offered and reports success"),
    Cell("starttls-required", "starttls", "STARTTLS required", "startTLS: false", "None",
         lambda p: {"startTLS": False, "authentication": "None", "passwordFrom": None,
                    "username": None, "from": p.user},
         "none", _sw("starttls", "none"),
         "StartTLSRequired at mail_from", "MAIL FROM rejected (exit 23)",
         note="`530 5.7.0 Must issue a STARTTLS command first`"),
    Cell("auth-required", "starttls", "STARTTLS required, sender login maps",
         "startTLS: true, from: an address that has an owner", "None",
         lambda p: {"authentication": "None", "passwordFrom": None, "username": None,
                    "from": p.user},
         "none", _sw("starttls", "starttls"),
         "AuthenticationRequired at rcpt_to", "RCPT TO rejected (exit 24)",
         note="`553 5.7.1 Sender address rejected: not logged in`: the server demands AUTH "
              "for this sender and the resource has none"),
    Cell("unknown-ca", "starttls", "STARTTLS required", "startTLS: true, no caBundleFrom", "PLAIN",
         lambda p: {}, "password_no_ca", _sw("starttls", "starttls", auth="PLAIN", ca=False),
         "CertificateInvalid at starttls", "TLS failed (exit 29)"),
    Cell("wrong-host", "starttls", "STARTTLS required, certificate for mx.interop.test + 127.0.0.1",
         "startTLS: true, host not in certificate", "PLAIN",
         lambda p: {"tls": {"serverName": "localhost"}}, "password",
         _sw("starttls", "starttls", auth="PLAIN", server="localhost"),
         "CertificateInvalid at starttls", "passed",
         note="swaks 20201014 `--tls-verify` checks the CA but not the host name"),
    Cell("expired-cert", "expired_cert", "STARTTLS required, certificate expired yesterday",
         "startTLS: true", "PLAIN", lambda p: {"port": p.ports["expired_cert"]}, "password",
         _sw("expired_cert", "starttls", auth="PLAIN"),
         "CertificateInvalid at starttls", "TLS failed (exit 29)"),
    Cell("tls-floor", "tls12_only", "STARTTLS required, TLS 1.2 at most",
         "startTLS: true, tls.minVersion: \"1.3\"", "PLAIN",
         lambda p: {"port": p.ports["tls12_only"], "tls": {"minVersion": "1.3"}}, "password",
         None, "TLSHandshakeFailed at starttls", "n/a (no TLS floor option)"),
    Cell("server-busy", "busy", "answers 421 4.3.2 to every client", "startTLS: true",
         "PLAIN", lambda p: {"port": p.ports["busy"], "connectionTest": {"timeoutSeconds": 2}},
         "password", _sw("busy", "starttls", auth="PLAIN"),
         "ServerUnavailable at banner", "bad banner (exit 21)",
         note="retryable: the probe retries with backoff within timeoutSeconds"),
    Cell("implicit-on-starttls-port", "starttls", "STARTTLS required",
         "socketFactory SSL, fallback: false",
         "PLAIN", lambda p: {"socketFactory": {**_SF, "port": p.starttls_port}}, "password",
         _sw("starttls", "implicit", auth="PLAIN"),
         "ImplicitTLSToPlainPort at tls", "TLS failed (exit 29)"),
    Cell("implicit-fallback", "starttls", "STARTTLS required",
         "socketFactory SSL, fallback: true, startTLS: false", "PLAIN",
         lambda p: {"startTLS": False,
                    "socketFactory": {**_SF, "port": p.starttls_port, "fallback": True}},
         "password", None, "passed via PLAIN (warning: InsecureFallbackUsed)", "n/a (no fallback)",
         note="the probe's plain fallback was upgraded with STARTTLS before AUTH; JavaMail "
              "stayed plain, was offered no AUTH (smtpd_tls_auth_only) and reported success "
              "without authenticating"),
    Cell("starttls-on-implicit-port", "implicit", "implicit TLS (wrappermode)", "startTLS: true",
         "PLAIN", lambda p: {"port": p.implicit_port, "connectionTest": {"timeoutSeconds": 1}},
         "password", _sw("implicit", "starttls", auth="PLAIN", timeout=1.0),
         "ReadTimeout at banner", "bad banner (exit 21)",
         note="the server waits for a TLS ClientHello; the client waits for a banner"),
    Cell("pipelined-auth", "starttls", "STARTTLS required", "startTLS: true, pipelineAuth: true",
         "PLAIN", lambda p: {"connectionTest": _PIPELINE}, "password",
         _sw("starttls", "starttls", auth="PLAIN", extra=("--pipeline",)),
         "passed via PLAIN (AUTH pipelined)", "passed",
         note="AUTH PLAIN with its initial response, MAIL, RCPT, RSET and QUIT in one write "
              "(RFC 4954 section 4): one round trip fewer; swaks runs with `--pipeline`"),
    Cell("forbid-pipelining", "forbid_pipelining",
         "STARTTLS required, smtpd_forbid_unauth_pipelining = yes",
         "startTLS: true, pipelineAuth: true", "PLAIN",
         lambda p: {"port": p.ports["forbid_pipelining"], "connectionTest": _PIPELINE},
         "password", _sw("forbid_pipelining", "starttls", auth="PLAIN", extra=("--pipeline",)),
         "passed via PLAIN (AUTH pipelined)", "passed",
         note="Postfix hangs up on input sent where RFC 2920 forbids it, and accepts the "
              "pipelined AUTH PLAIN as RFC 4954 allows"),
    Cell("reject-pipelining", "reject_pipelining",
         "STARTTLS required, reject_unauth_pipelining first in the relay restrictions",
         "startTLS: true, pipelineAuth: true", "PLAIN",
         lambda p: {"port": p.ports["reject_pipelining"], "connectionTest": _PIPELINE},
         "password", _sw("reject_pipelining", "starttls", auth="PLAIN", extra=("--pipeline",)),
         "passed via PLAIN (AUTH pipelined)", "passed"),
)


# What the original form's JavaMail session does with the same resource (Transport.connect:
# no relay check).  Measured like the other two columns: `test_cell_javamail[...]` runs
# every cell with Debian's Jakarta Mail on OpenJDK (installed by ./dev test) and fails,
# never skips, when they are missing.
JAVAMAIL: dict[str, str] = {
    "starttls-plain": 'passed',
    "starttls-login": 'passed',
    "starttls-cram-md5": (
        'AuthenticationFailedException: No authentication mechanisms supported '
        'by both server and client'
    ),
    "implicit-plain": 'passed',
    "wrong-password": (
        'AuthenticationFailedException: 535 5.7.8 Error: authentication '
        'failed: (reason unavailable)'
    ),
    "send-as": 'passed',
    "xoauth2": 'passed',
    "oauthbearer": (
        'AuthenticationFailedException: No authentication mechanisms supported '
        'by both server and client'
    ),
    "oauth-choice": 'passed',
    "xoauth2-bad": (
        'AuthenticationFailedException: 334 '
        'eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0='
    ),
    "oauthbearer-bad": (
        'AuthenticationFailedException: No authentication mechanisms supported '
        'by both server and client'
    ),
    "downgrade": 'passed (AUTH in cleartext)',
    "plaintext-auth": 'passed (AUTH in cleartext)',
    "plaintext-optin": 'passed (AUTH in cleartext)',
    "no-auth": 'passed',
    "no-auth-offered": 'passed',
    "starttls-required": 'passed',
    "auth-required": 'passed',
    "unknown-ca": 'MessagingException: Could not convert socket to TLS',
    "wrong-host": 'passed',
    "expired-cert": 'MessagingException: Could not convert socket to TLS',
    "tls-floor": 'MessagingException: Could not convert socket to TLS',
    "server-busy": (
        'MessagingException: Got bad greeting from SMTP host: HOST, port: '
        'PORT, response: 421 4.3.2 <HOST[HOST]>: Client host rejected: Service '
        'temporarily unavailable'
    ),
    "implicit-on-starttls-port": (
        'MessagingException: Could not connect to SMTP host: HOST, port: PORT'
    ),
    "implicit-fallback": 'passed',
    "starttls-on-implicit-port": 'MessagingException: Exception reading response',
    "pipelined-auth": 'passed',
    "forbid-pipelining": 'passed',
    "reject-pipelining": 'passed',
}


# --- running a cell ---------------------------------------------------------------------


def _base_spec(peer: PostfixPeer) -> dict[str, Any]:
    return {"host": peer.host, "port": peer.starttls_port, "authentication": "UsernamePassword",
            "startTLS": True, "username": peer.user, "passwordFrom": {"env": "UNUSED"},
            "connectionTest": {"timeoutSeconds": 10}}


def build_spec(peer: PostfixPeer, cell: Cell) -> ExternalSmtpSpec:
    data = _base_spec(peer)
    data.update(cell.spec(peer))
    spec = ExternalSmtpSpec.model_validate({k: v for k, v in data.items() if v is not None})
    assert spec.connect_port == peer.ports[cell.key], f"{cell.id}: spec and key disagree"
    return spec


def build_creds(peer: PostfixPeer, cell: Cell) -> ProbeCredentials:
    if cell.creds == "none":
        return ProbeCredentials(ca_bundle_pem=peer.ca_pem)
    if cell.creds in ("token", "bad_token"):
        good = peer.issue_token(cell.id) if cell.creds == "token" else None

        async def provider(force_refresh: bool) -> Secret:
            if good is not None:
                return good
            # Never granted: Dovecot's introspection says inactive, every time.
            return Secret(canary.ACCESS_TOKEN_PREFIX + canary.canary("rejected"))

        return ProbeCredentials(token_provider=provider, ca_bundle_pem=peer.ca_pem)
    password = Secret(canary.canary("wrong")) if cell.creds == "wrong_password" \
        else peer.password
    ca = None if cell.creds == "password_no_ca" else peer.ca_pem
    return ProbeCredentials(password=password, ca_bundle_pem=ca)


def probe_outcome(v: Verdict) -> str:
    if v.passed:
        text = f"passed via {v.details.get('mechanism')}" if v.details.get("mechanism") \
            else "passed"
        if v.details.get("authPipelined"):
            text += " (AUTH pipelined)"
        return text + (f" (warning: {', '.join(v.warnings)})" if v.warnings else "")
    return f"{v.reason} at {v.stage}"


def swaks_outcome(run: tuple[SwaksResult, Connection] | None, cell: Cell) -> str:
    if run is None:
        return cell.expect_swaks if cell.expect_swaks.startswith("n/a") else "n/a"
    result, conn = run
    return result.verdict.removeprefix("failed: ") + (
        CLEARTEXT if conn.sent_auth_in_cleartext() else "")


async def run_cell_probe(peer: PostfixPeer, cell: Cell) -> Verdict:
    return await run_probe(build_spec(peer, cell), build_creds(peer, cell))


CLEARTEXT = " (AUTH in cleartext)"


def _secret(peer: PostfixPeer, cell: Cell) -> Secret | None:
    """The credential a reference client sends for this cell (password or token)."""
    if cell.creds == "none":
        return None
    if cell.creds == "wrong_password":
        return Secret(canary.canary("wrong"))
    if cell.creds == "token":
        return peer.issue_token(cell.id)
    if cell.creds == "bad_token":
        return Secret(canary.ACCESS_TOKEN_PREFIX + canary.canary("rejected"))
    return peer.password


def run_cell_swaks(peer: PostfixPeer, cell: Cell) -> tuple[SwaksResult, Connection] | None:
    """swaks on the cell, through a tap that tells whether AUTH went out in cleartext."""
    if cell.swaks is None:
        return None
    kw = dict(cell.swaks(peer))
    server = kw.pop("server", peer.host)
    sender = peer.other_sender if kw.pop("sender", None) == "OTHER" else peer.user
    ca_file = peer.ca_file if kw.pop("ca", True) else None
    auth = kw.pop("auth", None)
    with TcpProxy(peer.host, kw.pop("port")) as tap:
        result = run_swaks(server, tap.port, tls=kw.pop("tls"), auth=auth, user=peer.user,
                           password=_secret(peer, cell) if auth else None, sender=sender,
                           ca_file=ca_file, **kw)
        conns = tap.wait_closed(1)
    return result, (conns[0] if conns else Connection())


def javamail_args(peer: PostfixPeer, cell: Cell, ports: dict[int, int]) -> dict[str, Any]:
    """The cell's resource as the original form's JavaMail session would see it.

    ``ports`` maps the peer's ports to the taps in front of them.
    """
    spec = build_spec(peer, cell)
    props = {"mail.smtp.starttls.enable": str(spec.start_tls).lower(),
             "mail.smtp.connectiontimeout": "5000",
             "mail.smtp.timeout": str(int(spec.connection_test.timeout_seconds * 1000)),
             "mail.smtp.localhost": "javamail.interop.test"}
    if spec.socket_factory is not None and spec.implicit_tls:
        props["mail.smtp.socketFactory.class"] = IMPLICIT_TLS_CLASS
        props["mail.smtp.socketFactory.port"] = str(ports[spec.connect_port])
        props["mail.smtp.socketFactory.fallback"] = str(spec.socket_factory.fallback).lower()
    if spec.authentication == "OAuth2":
        props["mail.smtp.auth.mechanisms"] = "XOAUTH2"
    if spec.tls.min_version == "1.3":
        props["mail.smtp.ssl.protocols"] = "TLSv1.3"
    user = spec.username if spec.authentication != "None" else None
    return {"host": spec.tls.server_name or spec.host, "port": ports[spec.port],
            "user": user, "props": props,
            "ca_file": None if cell.creds == "password_no_ca" else peer.ca_file}


def run_cell_javamail(peer: PostfixPeer, cell: Cell) -> tuple[JavaMailResult, list[Connection]]:
    spec = build_spec(peer, cell)
    targets = sorted({spec.port, spec.connect_port})
    with contextlib.ExitStack() as stack:
        taps = {p: stack.enter_context(TcpProxy(peer.host, p)) for p in targets}
        args = javamail_args(peer, cell, {p: t.port for p, t in taps.items()})
        result = run_javamail(password=_secret(peer, cell), **args)
        conns = [c for t in taps.values() for c in t.wait_closed(1, timeout=2)]
    return result, conns


def javamail_outcome(result: JavaMailResult, conns: list[Connection]) -> str:
    # Keep the exception and JavaMail's own words; drop what varies (ports, addresses).
    line = re.sub(r"127\.0\.0\.1|localhost", "HOST", result.line)
    line = re.sub(r"\b\d{4,5}\b", "PORT", line)
    line = line.removeprefix("failed: ")
    return line + (CLEARTEXT if any(c.sent_auth_in_cleartext() for c in conns) else "")


def verdict_texts(v: Verdict) -> list[str]:
    """Everything of a verdict a user could see (for the canary check)."""
    lines = [ln.line for ln in v.transcript]
    return [v.message, v.action, repr(v.details), repr(v.warnings), *lines]


# --- rendering ------------------------------------------------------------------------


Row = tuple[Cell, str, str, str]  # cell, probe, swaks, JavaMail


def render(rows: list[Row]) -> str:
    out = ["| # | cell | Postfix listener | client configuration | auth | smtpctl probe "
           "| swaks | JavaMail (the original) | notes |",
           "|---|---|---|---|---|---|---|---|---|"]
    for i, (cell, probe, swaks, javamail) in enumerate(rows, 1):
        notes = cell.note
        if cell.want_probe and probe != cell.want_probe:
            notes = f"**should be `{cell.want_probe}`**; " + notes
        out.append(f"| {i} | `{cell.id}` | {cell.listener} | {cell.client} | {cell.auth} "
                   f"| {probe} | {swaks} | {javamail} | {notes} |")
    return "\n".join(out) + "\n"


def expected_rows() -> list[Row]:
    return [(c, c.expect_probe, c.expect_swaks, JAVAMAIL[c.id]) for c in CELLS]


def doc_block(text: str) -> str | None:
    m = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    return m.group(1) if m else None


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
async def test_cell(postfix_peer: PostfixPeer, cell: Cell) -> None:
    verdict = await run_cell_probe(postfix_peer, cell)
    assert_no_canary(*verdict_texts(verdict), where=f"probe verdict of {cell.id}")
    assert_secret_absent("\n".join(verdict_texts(verdict)), canary.PASSWORD, cell.id)
    assert probe_outcome(verdict) == cell.expect_probe, verdict.message


_SWAKS = [c for c in CELLS if c.swaks is not None]


@pytest.mark.parametrize("cell", _SWAKS, ids=[c.id for c in _SWAKS])
def test_cell_swaks(postfix_peer: PostfixPeer, cell: Cell) -> None:
    peers.fail_unless(swaks_skip_reason())
    run = run_cell_swaks(postfix_peer, cell)
    assert run is not None
    assert_no_canary(run[0].transcript, where=f"swaks transcript of {cell.id}")
    assert_secret_absent(run[0].transcript, canary.PASSWORD, f"swaks transcript of {cell.id}")
    assert swaks_outcome(run, cell) == cell.expect_swaks


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_cell_javamail(postfix_peer: PostfixPeer, cell: Cell) -> None:
    peers.fail_unless(javamail_skip_reason())
    result, conns = run_cell_javamail(postfix_peer, cell)
    assert_no_canary(result.line, where=f"JavaMail output of {cell.id}")
    assert javamail_outcome(result, conns) == JAVAMAIL[cell.id]


_WANTED = [c for c in CELLS if c.want_probe]

if _WANTED:  # no placeholder test (it could only skip) while every verdict is right

    @pytest.mark.parametrize("cell", _WANTED, ids=[c.id for c in _WANTED])
    @pytest.mark.xfail(strict=True, reason="the probe's verdict is known wrong here (cell note)")
    async def test_cell_meets_issue(postfix_peer: PostfixPeer, cell: Cell) -> None:
        verdict = await run_cell_probe(postfix_peer, cell)
        assert probe_outcome(verdict) == cell.want_probe


def test_every_column_is_measured() -> None:
    """Each cell's three expectations are asserted by a test that runs in CI: the doc (the
    rendering of the expectations) can only show what was measured."""
    assert set(JAVAMAIL) == {c.id for c in CELLS}
    assert all(c.swaks is not None or c.expect_swaks.startswith("n/a") for c in CELLS)


def test_interop_doc_is_current() -> None:
    text = DOC.read_text()
    assert doc_block(text) == render(expected_rows()), (
        "docs/interop.md is out of date: run `python -m tests.test_interop_matrix --write`")


def prose_disagreements(text: str) -> list[str]:
    """What the bullets of docs/interop.md that start with a cell's name say against the
    table: an unknown cell, or a catalog reason that is not the cell's probe verdict (a
    reason right after "not" is what the probe does *not* say, and may differ)."""
    from reconciler.catalog import CATALOG

    cells = {c.id: c for c in CELLS}
    prose = text[text.index(END) + len(END):] if END in text else text
    out = []
    for m in re.finditer(r"^- `([a-z0-9-]+)`:(.*?)(?=^\S|^- |\Z)", prose, re.M | re.S):
        cid, body = m.group(1), " ".join(m.group(2).split())
        cell = cells.get(cid)
        if cell is None:
            out.append(f"`{cid}`: no such cell in CELLS")
            continue
        verdict = cell.expect_probe.split(" ")[0]
        for r in re.finditer(r"`([A-Z][A-Za-z0-9]+)`", body):
            negated = re.search(r"\bnot\b(?: (?:a|an|the)\b)?(?: \w+)?\s*$", body[:r.start()])
            if r.group(1) in CATALOG and r.group(1) != verdict and not negated:
                out.append(f"`{cid}`: the text names `{r.group(1)}`, the table says "
                           f"{cell.expect_probe!r}")
    return out


def test_interop_prose_agrees_with_the_table() -> None:
    text = DOC.read_text()
    assert re.search(r"^- `auth-required`:", text, re.M), "the checked bullets are gone"
    assert prose_disagreements(text) == []


def test_the_prose_check_catches_a_contradiction() -> None:
    """The contradiction docs/interop.md once had: the auth-required bullet said the probe
    reports SenderRejected while the table said AuthenticationRequired."""
    assert prose_disagreements(
        END + "\n- `auth-required`: the probe reports `SenderRejected` for this.\n") == [
        "`auth-required`: the text names `SenderRejected`, the table says "
        "'AuthenticationRequired at rcpt_to'"]
    assert prose_disagreements(
        END + "\n- `auth-required`: reports `AuthenticationRequired`, not a generic "
              "`SenderRejected`.\n- `no-such-cell`: x\n"
    ) == ["`no-such-cell`: no such cell in CELLS"]


def test_every_listener_of_the_peer_is_exercised() -> None:
    """A listener added to the fixture without a matrix cell would go untested."""
    from tests.support.postfix import LISTENERS

    assert set(LISTENERS) == {c.key for c in CELLS}


# --- the script -------------------------------------------------------------------------


async def _observe(peer: PostfixPeer) -> list[Row]:
    rows = []
    for cell in CELLS:
        verdict = await run_cell_probe(peer, cell)
        swaks = swaks_outcome(run_cell_swaks(peer, cell), cell)
        jm = javamail_outcome(*run_cell_javamail(peer, cell))
        rows.append((cell, probe_outcome(verdict), swaks, jm))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_interop_matrix",
        description="Run the interop matrix against a fresh Postfix + Dovecot peer.")
    parser.add_argument("--write", action="store_true",
                        help="rewrite the matrix block in docs/interop.md from the observations")
    args = parser.parse_args(argv)
    for reason in (swaks_skip_reason(), javamail_skip_reason()):
        if reason:  # every column is measured, or none is written
            print(f"cannot run: {reason}", file=sys.stderr)
            return 2
    with start_peer() as peer:
        rows = asyncio.run(_observe(peer))
    table = render(rows)
    print(table)
    differ = [(c.id, p, s, j) for c, p, s, j in rows
              if (p, s, j) != (c.expect_probe, c.expect_swaks, JAVAMAIL[c.id])]
    for cid, p, s, j in differ:
        print(f"differs from CELLS: {cid}: probe {p!r}, swaks {s!r}, JavaMail {j!r}",
              file=sys.stderr)
    if args.write:
        text = DOC.read_text()
        if doc_block(text) is None:
            print(f"{DOC} has no {BEGIN} ... {END} block", file=sys.stderr)
            return 2
        start = text.index(BEGIN) + len(BEGIN) + 1
        DOC.write_text(text[:start] + table + text[text.index(END):])
        print(f"wrote {DOC}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
