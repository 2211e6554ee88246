"""The result of one connection test (plain data; the contract between probe and engine)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.secret import Secret


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    direction: Literal["c", "s"]  # c: client to server, s: server to client
    line: str  # already redacted: never holds a credential
    elapsed_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "line": self.line,
                "elapsedSeconds": round(self.elapsed_seconds, 6)}


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    stage: str  # resolve|connect|tls|banner|ehlo|starttls|auth|mail_from|rcpt_to|quit
    reason: str  # a name from reconciler.catalog
    message: str
    action: str
    retryable: bool
    duration_seconds: float
    warnings: tuple[str, ...] = ()  # catalog reasons of kind "warning"
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Redacted lines; the probe hands a view that is redacted when first read
    # (reconciler.probe.transcript): read it only when it is shown or stored.
    transcript: Sequence[TranscriptLine] = ()
    details: dict[str, Any] = field(default_factory=dict)  # mechanism, tls version, peer, ...
    # True when the server rejected the OAuth token (the engine drops the cached token
    # and retries once with a fresh one before reporting failure).
    token_rejected: bool = False


# A callable that returns an OAuth 2.0 access token; ``force_refresh=True`` asks for a
# fresh token (the cached one was rejected by the server).
TokenProvider = Callable[[bool], Awaitable[Secret]]


@dataclass(frozen=True, slots=True)
class ProbeCredentials:
    """What the probe needs besides the spec, resolved by the credentials layer."""

    password: Secret | None = None  # UsernamePassword
    token_provider: TokenProvider | None = None  # OAuth2
    ca_bundle_pem: str | None = None  # spec.tls.caBundleFrom, resolved (a CA is not secret)
