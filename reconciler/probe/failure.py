"""How a failed step becomes a catalog reason.

A :class:`ProbeFailure` is raised inside one connection attempt and turned into the
verdict by the runner.  :func:`classify_reply` maps an SMTP reply at a stage to a reason:
provider hints recognised in the reply text win over the stage's default, and whether a
retry can help follows the reply class (4xx transient, 5xx permanent).
"""

from __future__ import annotations

from reconciler import catalog


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


def reply_failure(stage: str, code: int, text: str, redact: object, *,
                  oauth: bool = False, token_rejected: bool = False) -> ProbeFailure:
    """A failure for an unexpected reply, quoting it (redacted) in the message."""
    quoted = " ".join(text.split("\n")) if text else ""
    said = redact(f"{code} {quoted}".strip()) if callable(redact) else f"{code}"
    reason = classify_reply(stage, code, text, oauth=oauth)
    retryable = True if 400 <= code < 500 else (False if 500 <= code < 600 else None)
    return ProbeFailure(stage, reason, f"the server answered {said!s}", retryable=retryable,
                        token_rejected=token_rejected)
