"""The contract of the credentials layer: secret sources and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from reconciler.resources import SecretRef
from reconciler.secret import Secret


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolved secret and its version (changes when the value changes; safe to store)."""

    value: Secret
    version: str


class CredentialError(Exception):
    """Resolution failed.  ``reason`` is a catalog name; ``message`` never holds a value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class SecretSource(Protocol):
    """Resolves a reference (secretKeyRef | env | file) in a namespace."""

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved: ...
