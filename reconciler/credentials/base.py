"""The contract of the credentials layer: secret sources and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reconciler.resources import SecretRef
from reconciler.secret import Secret


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolved secret and its version (changes when the value changes; safe to store).

    ``origin``: for a file, the real path of the file that was actually opened and read
    (what the source policy judges for every resource the value is handed to); None for
    other sources.
    """

    value: Secret
    version: str
    origin: str | None = None


class CredentialError(Exception):
    """Resolution failed.  ``reason`` is a catalog name; ``message`` never holds a value."""

    def __init__(self, reason: str, message: str, *, cause_reason: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        # For wrapping reasons (OAuth2ProviderNotReady): the underlying catalog reason.
        self.cause_reason = cause_reason


class SecretSource(Protocol):
    """Resolves a reference (secretKeyRef | env | file) in a namespace."""

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved: ...


@runtime_checkable
class WritableSecretSource(SecretSource, Protocol):
    """A source that can also store a value (refresh-token rotation, ``smtpctl oauth login``).

    ``write`` returns the new version of the reference.  A read-only source (environment
    variables, a read-only mount) raises :class:`CredentialError` and the caller keeps the
    value in memory and raises the ``RefreshTokenNotPersisted`` warning.
    """

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str: ...
