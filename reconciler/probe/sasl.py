"""SASL mechanisms for SMTP AUTH: PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER.

Why hand-driven instead of ``aiosmtplib.SMTP.login()``: ``login()`` tries every
advertised mechanism in turn, so one wrong password becomes several failed logins
(servers throttle and lock accounts on that); and the OAuth failure challenge, the
transcript masking and OAUTHBEARER (not built into aiosmtplib) need the exchange line by
line.  Exactly one mechanism is run per AUTH.

Every client line of an exchange is recorded as a mask; the payloads are also registered
with the redactor so that an echo by the server is masked too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any

from aiosmtplib.response import SMTPResponse

from reconciler.probe.wire import Wire
from reconciler.secret import Secret

PASSWORD_MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
OAUTH_MECHANISMS: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER")
# RFC 4954: an AUTH command with its initial response may be up to 12288 octets.
_MAX_INITIAL_LINE = 12288


def choose_mechanism(authentication: str, advertised: list[str]) -> str | None:
    """The mechanism to use, or ``None`` when the server offers none we can use.

    Passwords: PLAIN, then LOGIN (equally strong under TLS; PLAIN needs one round trip
    fewer), and CRAM-MD5 only when it is all the server offers.  OAuth 2.0: XOAUTH2 first
    (Google and Microsoft 365 offer only it), then the standard OAUTHBEARER (RFC 7628).
    """
    offered = {m.upper() for m in advertised}
    prefs = PASSWORD_MECHANISMS if authentication == "UsernamePassword" else OAUTH_MECHANISMS
    return next((m for m in prefs if m in offered), None)


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    final: SMTPResponse
    oauth_error: dict[str, Any] | None = None  # the decoded failure challenge, if any


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _initial(wire: Wire, mech: str, payload: bytes, timeout: float, *,
                   secret: bool = True) -> SMTPResponse:
    """``AUTH MECH <initial response>``, or the two-step form for very long payloads.

    ``secret=False`` for a payload that is not a credential (LOGIN's user name): it is
    still masked in the AUTH line, but not registered with the redactor, which would
    otherwise mask the user name in MAIL FROM as well.
    """
    encoded = _b64(payload)
    if secret:
        wire.transcript.redact.add(payload)
        wire.transcript.redact.add(encoded)
    line = f"AUTH {mech} {encoded}"
    if len(line) <= _MAX_INITIAL_LINE:
        return await wire.command(line, timeout, display=f"AUTH {mech} ******")
    first = await wire.command(f"AUTH {mech}", timeout)
    if first.code != 334:
        return first
    return await wire.command(encoded, timeout, display="******")


def plain_initial_line(wire: Wire, username: str, password: Secret) -> str | None:
    """``AUTH PLAIN <initial response>`` for a pipelined group, its payload registered with
    the redactor; ``None`` when the line would be too long to carry the response (the
    two-step form needs a round trip of its own, so it cannot be pipelined)."""
    wire.transcript.redact.add(password)
    payload = b"\0" + username.encode() + b"\0" + password.reveal().encode()
    encoded = _b64(payload)
    line = f"AUTH PLAIN {encoded}"
    if len(line) > _MAX_INITIAL_LINE:
        return None
    wire.transcript.redact.add(payload)
    wire.transcript.redact.add(encoded)
    return line


async def auth_password(
    wire: Wire, mech: str, username: str, password: Secret, timeout: float
) -> AuthOutcome:
    wire.transcript.redact.add(password)
    if mech == "PLAIN":
        payload = b"\0" + username.encode() + b"\0" + password.reveal().encode()
        return AuthOutcome(await _initial(wire, "PLAIN", payload, timeout))
    if mech == "LOGIN":
        reply = await _initial(wire, "LOGIN", username.encode(), timeout, secret=False)
        if reply.code != 334:
            return AuthOutcome(reply)
        encoded = _b64(password.reveal().encode())
        wire.transcript.redact.add(encoded)
        return AuthOutcome(await wire.command(encoded, timeout, display="******"))
    if mech == "CRAM-MD5":
        reply = await wire.command("AUTH CRAM-MD5", timeout)
        if reply.code != 334:
            return AuthOutcome(reply)
        try:
            challenge = base64.b64decode(reply.message.strip(), validate=True)
        except (binascii.Error, ValueError):
            return AuthOutcome(await wire.command("*", timeout))
        digest = hmac.new(password.reveal().encode(), challenge, "md5").hexdigest()
        answer = _b64(f"{username} {digest}".encode())
        wire.transcript.redact.add(answer)
        return AuthOutcome(await wire.command(answer, timeout, display="******"))
    raise ValueError(f"not a password mechanism: {mech}")


def oauth_payload(mech: str, username: str, token: Secret) -> bytes:
    bearer = f"auth=Bearer {token.reveal()}"
    if mech == "XOAUTH2":
        return f"user={username}\x01{bearer}\x01\x01".encode()
    # RFC 7628 section 3.1: gs2 header "n,a=<authzid>," then key=value pairs.
    authzid = username.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={authzid},\x01{bearer}\x01\x01".encode()


async def auth_oauth(
    wire: Wire, mech: str, username: str, token: Secret, timeout: float
) -> AuthOutcome:
    """One XOAUTH2/OAUTHBEARER exchange, including the failure challenge.

    On a rejected token the server sends ``334 <base64 JSON error>`` and waits for the
    client: an empty line for XOAUTH2 (Google's documented behaviour), ``AQ==`` (a single
    ``%x01``, RFC 7628 section 3.2.3) for OAUTHBEARER; then it sends the final 535.
    """
    wire.transcript.redact.add(token)
    reply = await _initial(wire, mech, oauth_payload(mech, username, token), timeout)
    if reply.code != 334:
        return AuthOutcome(reply)
    error = decode_oauth_error(reply.message)
    final = await wire.command("" if mech == "XOAUTH2" else "AQ==", timeout)
    return AuthOutcome(final, error)


def decode_oauth_error(challenge: str) -> dict[str, Any] | None:
    """The JSON error a server sends in the OAuth failure challenge, if it decodes."""
    try:
        data = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (binascii.Error, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_oauth_error(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    parts = [f"{k}={error[k]}" for k in ("status", "scope", "schemes") if error.get(k)]
    return ("the server reported " + ", ".join(str(p) for p in parts)) if parts else ""
