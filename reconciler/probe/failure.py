"""How a failed step becomes a catalog reason.

A :class:`ProbeFailure` is raised inside one connection attempt and turned into the
verdict by the runner.  :func:`classify_reply` maps an SMTP reply at a stage to a reason:
provider hints recognised in the reply text win over the stage's default, and whether a
retry can help follows the reply class (4xx transient, 5xx permanent).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

from reconciler import catalog
from reconciler.probe.redact import Redactor, cap

QUOTE_MAX = 512  # a quoted server reply (a multi-line reply may be 32 KiB)


class ProbeFailure(Exception):
    """One attempt failed.  ``detail`` is already redacted (it may quote the server)."""

    def __init__(
        self, stage: str, reason: str, detail: str = "", *, retryable: bool | None = None,
        timeout: bool = False, token_rejected: bool = False, retry_now: bool = True,
    ) -> None:
        super().__init__(f"{stage}: {reason}")
        catalog.get(reason)  # unknown reasons are programming errors: fail loudly
        self.stage = stage
        self.reason = reason
        self.detail = detail
        self.retryable = catalog.get(reason).retryable if retryable is None else retryable
        self.timeout = timeout
        self.token_rejected = token_rejected
        # False when a retry *within this probe* cannot help even though the reason is
        # retryable later (an unknown host name: DNS will not change in a second).
        self.retry_now = retry_now

    @property
    def message(self) -> str:
        base = catalog.get(self.reason).message
        return f"{base}: {self.detail}" if self.detail else base


def _hint(code: int, text: str) -> str | None:
    """Provider replies with a known meaning (Gmail, Microsoft 365, Postfix)."""
    upper = text.upper()
    if code == 534 and "5.7.9" in text:
        return "ApplicationPasswordRequired"  # Gmail: application-specific password
    if code == 535 and "5.7.139" in text:
        return "SmtpAuthDisabled"  # Microsoft 365: SMTP AUTH disabled for the tenant
    if code == 550 and "5.7.60" in text:
        return "SendAsDenied"  # Microsoft 365: no Send As permission
    if code == 530 and "STARTTLS" in upper:
        return "StartTLSRequired"  # "530 5.7.0 Must issue a STARTTLS command first"
    if code == 538:
        return "StartTLSRequired"  # RFC 4954: encryption required for the mechanism
    if code == 530 and ("AUTHENTICATION REQUIRED" in upper or "5.7.57" in text
                        or "NOT AUTHENTICATED" in upper):
        return "AuthenticationRequired"
    if code >= 500 and ("NOT LOGGED IN" in upper or "AUTHENTICATION REQUIRED" in upper):
        # Postfix: "553 5.7.1 <a@b>: Sender address rejected: not logged in" - the
        # server demands AUTH for this sender (the original's "Authentication required").
        return "AuthenticationRequired"
    return None


def _about_sender(text: str) -> bool:
    upper = text.upper()
    return ("SENDER ADDRESS REJECTED" in upper or "NOT OWNED BY USER" in upper
            or "SENDER REJECTED" in upper or "5.1.7" in text or "5.1.8" in text)


_STAGE_DEFAULT = {
    "banner": "ServerUnavailable",
    "ehlo": "ProtocolError",
    "starttls": "StartTLSUnavailable",
    "auth": "AuthenticationFailed",
    "mail_from": "SenderRejected",
    "rcpt_to": "RelayDenied",
    "data": "ProtocolError",
    "quit": "ProtocolError",
}


def classify_reply(stage: str, code: int, text: str, *, oauth: bool = False) -> str:
    """The catalog reason for an unexpected reply ``code``/``text`` at ``stage``."""
    hint = _hint(code, text)
    if hint is not None:
        return hint
    if stage in ("mail_from", "rcpt_to") and _about_sender(text):
        # Postfix with smtpd_delay_reject=yes (its default) rejects a sender it does not
        # accept only at RCPT TO: the reply, not the stage, says whose fault it is.
        return "SenderRejected"
    if code == 421 or (400 <= code < 500 and stage in ("banner", "ehlo", "auth", "data")):
        return "ServerUnavailable"
    if stage == "auth":
        if code == 504:
            return "AuthNotSupported"
        if code in (500, 502):
            return "AuthNotSupported"
        return "OAuth2AuthenticationFailed" if oauth else "AuthenticationFailed"
    if code < 200 or code >= 600:
        return "ProtocolError"
    return _STAGE_DEFAULT.get(stage, "ProtocolError")


def join_reply(text: str) -> str:
    """A multi-line reply's text on one line, without repeating the enhanced status code
    every line carries (``534-5.7.9 ... Learn more at`` / ``534 5.7.9  https://...``)."""
    lines = [line.strip() for line in text.split("\n")] if text else []
    if not lines:
        return ""
    first = lines[0].split(" ", 1)[0]
    enhanced = first if first.count(".") == 2 and first[:1] in "245" else None
    out = [lines[0]]
    for line in lines[1:]:
        if enhanced and line.startswith(enhanced + " "):
            line = line[len(enhanced):].strip()
        elif enhanced and line == enhanced:
            continue
        out.append(line)
    return " ".join(" ".join(out).split())


def reply_failure(stage: str, code: int, text: str, redact: Redactor | None, *,
                  oauth: bool = False, token_rejected: bool = False) -> ProbeFailure:
    """A failure for an unexpected reply, quoting it in the message: secrets masked (on
    the whole reply first: a secret may be split over its lines), control characters
    escaped, one line, at most :data:`QUOTE_MAX` characters."""
    if redact is None:
        said = f"{code}"
    else:
        quoted = join_reply(redact.mask(text))
        said = cap(redact(f"{code} {quoted}".strip(), one_line=True), QUOTE_MAX, redact)
    reason = classify_reply(stage, code, text, oauth=oauth)
    retryable = True if 400 <= code < 500 else (False if 500 <= code < 600 else None)
    return ProbeFailure(stage, reason, f"the server answered {said!s}", retryable=retryable,
                        token_rejected=token_rejected)


# --- messages for transport failures (the probe's session calls these) ---------------------

_UNREACHABLE = {errno.ENETUNREACH: "no route to its network (ENETUNREACH)",
                errno.EHOSTUNREACH: "no route to the host (EHOSTUNREACH)"}


def where(host: str, address: str, port: int) -> str:
    """``smtp.example.com (192.0.2.7) port 587``: the name as written, the address used."""
    shown = f"[{address}]" if ":" in address else address
    return f"{host} port {port}" if address == host else f"{host} ({shown}) port {port}"


def connect_failure(host: str, address: str, port: int, exc: OSError) -> ProbeFailure:
    """A failed TCP connect, by errno: refused (nothing listens: the port or the server),
    unreachable (no route: the network, not the port), or another socket error."""
    target = where(host, address, port)
    if exc.errno == errno.ECONNREFUSED:
        return ProbeFailure("connect", "ConnectionRefused",
                            f"{target} refused the connection: nothing is listening on that "
                            "port (wrong port, or the server is down)")
    if exc.errno in _UNREACHABLE:
        return ProbeFailure("connect", "NetworkUnreachable",
                            f"{target}: {_UNREACHABLE[exc.errno]}")
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    text = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return ProbeFailure("connect", "ConnectionRefused", f"{target}: {text} ({name})")


def resolve_failure(host: str, exc: socket.gaierror) -> ProbeFailure:
    """A failed name lookup: a name that does not exist needs a change (a typo does not
    heal), a resolver that did not answer may recover; a close well-known name is named."""
    from reconciler.wellknown import suggest_host

    if exc.errno == socket.EAI_AGAIN:
        return ProbeFailure("resolve", "UnknownHost",
                            f"the DNS lookup of {host!r} failed temporarily (EAI_AGAIN: the "
                            "resolver did not answer); it is retried", retryable=True,
                            retry_now=False)
    hint = suggest_host(host)
    detail = f"{host!r} does not exist in DNS (NXDOMAIN or no address)"
    if hint:
        detail += f": did you mean {hint!r}?"
    return ProbeFailure("resolve", "UnknownHost", detail, retryable=False, retry_now=False)


def tls_failure(stage: str, exc: ssl.SSLError, *, implicit: bool) -> ProbeFailure:
    """An SSL error; implicit TLS answered by a plain SMTP banner gets its own reason."""
    reason = exc.reason or type(exc).__name__
    if implicit and reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                               "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return ProbeFailure(stage, "ImplicitTLSToPlainPort",
                            f"{reason}: this port speaks plain SMTP: use startTLS: true "
                            "(without socketFactory), or the implicit TLS port (usually 465)")
    return ProbeFailure(stage, "TLSHandshakeFailed", f"TLS handshake failed ({reason})")


def timeout_share(total: float, budget: float, what: str) -> str:
    """Why a step had ``budget`` seconds: its share of ``timeoutSeconds``."""
    from reconciler.resources import format_duration

    half = max(1.0, total / 2)
    if abs(budget - half) < 0.05:
        share = (f"each {what} may take half of spec.connectionTest.timeoutSeconds "
                 f"({format_duration(total)}), at least 1s")
    else:
        share = (f"what was left of spec.connectionTest.timeoutSeconds "
                 f"({format_duration(total)}) for the whole test")
    return share


def connect_timeout(host: str, address: str, port: int, budget: float, total: float
                    ) -> ProbeFailure:
    from reconciler.resources import format_duration

    return ProbeFailure("connect", "ConnectTimeout",
                        f"no answer from {where(host, address, port)} within "
                        f"{format_duration(budget)} ({timeout_share(total, budget, 'step')}); "
                        "a firewall that drops packets looks like this", timeout=True)


def read_timeout(stage: str, budget: float, total: float, *, handshake: bool = False
                 ) -> ProbeFailure:
    from reconciler.resources import format_duration

    share = timeout_share(total, budget, "reply")
    if handshake:
        return ProbeFailure(stage, "ReadTimeout",
                            f"no TLS handshake within {format_duration(budget)} ({share}): "
                            "is this port plain SMTP or STARTTLS?", timeout=True)
    return ProbeFailure(stage, "ReadTimeout",
                        f"no complete reply within {format_duration(budget)} at stage {stage} "
                        f"({share})", timeout=True)


def deadline_exceeded(stage: str, total: float, stage_seconds: dict[str, float]
                      ) -> ProbeFailure:
    from reconciler.resources import format_duration

    spent = ", ".join(f"{k} {format_duration(v)}" for k, v in stage_seconds.items() if v)
    return ProbeFailure(stage, "DeadlineExceeded",
                        f"spec.connectionTest.timeoutSeconds ({format_duration(total)}) ran out "
                        f"at stage {stage}; the server answers, but too slowly"
                        + (f" (time per stage: {spent})" if spent else ""), timeout=True)
