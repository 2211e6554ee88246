"""Typed shapes of the status the engine writes (wire form, camelCase keys).

These ``TypedDict``s describe exactly the ``status`` objects of the JSON Schemas in
``schemas/`` (``tests/test_engine_status_schema.py`` checks that the keys agree both ways
and that every status the engine writes validates).  They are plain dicts at run time,
so a store can hand a status over untouched (the Kubernetes store keeps the CR body)
and nothing is converted on the hot path; the type checker sees the keys.

No I/O and no pydantic here: ``smtpctl get`` and ``describe`` import this cheaply.
"""

from __future__ import annotations

from typing import Literal, TypedDict

ConditionType = Literal["Ready", "Reconciling", "Stalled", "Selected"]
ConditionStatus = Literal["True", "False", "Unknown"]
TlsMode = Literal["implicit", "starttls", "none"]
Authentication = Literal["UsernamePassword", "OAuth2", "None"]
Health = Literal["Healthy", "Failing"]


class Condition(TypedDict):
    """A ``metav1.Condition``."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class SecretKeySelectorDict(TypedDict):
    name: str
    key: str


class SecretRefDict(TypedDict, total=False):
    """A reference to a secret value (never the value): one of the three keys."""

    secretKeyRef: SecretKeySelectorDict
    env: str
    file: str


class ActiveTls(TypedDict, total=False):
    """The TLS trust the passing test relied on."""

    verify: bool
    serverName: str  # the name the certificate was checked against (SNI)
    minVersion: Literal["1.2", "1.3"]
    caBundleFrom: SecretRefDict
    caBundleVersion: str  # keyed hash of the CA bundle that was trusted
    version: str  # the negotiated protocol, e.g. TLSv1.3
    certificateNotAfter: str  # RFC 3339 expiry of the relay's certificate


class ActiveFailure(TypedDict):
    reason: str
    message: str


# ``status.active``: the connection that passed its test, as applications get it.
# Required keys: generation, host, port, authentication, tlsMode.  (Functional syntax:
# the wire name "from" is a Python keyword.)
ActiveRecord = TypedDict("ActiveRecord", {
    "generation": int,
    "host": str,
    "port": int,  # the port the passing connection used (never one that refused)
    "tlsMode": TlsMode,  # the TLS mode the passing connection used
    "fallbackUsed": bool,  # implicit TLS failed; the plain/STARTTLS fallback passed
    "authentication": Authentication,
    "username": str,
    "from": str,
    "passwordFrom": SecretRefDict,
    "oauth2Provider": str,
    "credentialVersion": str,  # keyed hash of the password (or provider version) tested
    "tls": ActiveTls,
    "digest": str,
    "verifiedAt": str,  # when this exact configuration last passed its test (RFC 3339)
    "health": Health,  # Failing: this configuration failed its latest re-verification
    "failingSince": str,
    "failure": ActiveFailure,
}, total=False)


class LastTest(TypedDict, total=False):
    passed: bool
    stage: str
    reason: str
    message: str
    durationSeconds: float
    generation: int
    warnings: list[str]


class MemoStatus(TypedDict, total=False):
    """``status.testMemo``: written by the Kubernetes store (``stores/kube.py``), never by
    the engine, which sees it as ``StoredObject.memo``."""

    digest: str
    generation: int
    testedAt: float
    dueAt: float
    passed: bool
    failures: int


class SmtpStatus(TypedDict, total=False):
    """``ExternalSmtp.status``."""

    observedGeneration: int
    conditions: list[Condition]
    selected: bool
    activeGeneration: int
    active: ActiveRecord
    lastTestTime: str
    lastSuccessfulTestTime: str
    lastTest: LastTest
    warnings: list[str]
    lastHandledReconcileAt: str
    testMemo: MemoStatus


class ProviderStatus(TypedDict, total=False):
    """``OAuth2Provider.status``."""

    observedGeneration: int
    conditions: list[Condition]
    lastTokenTime: str
    warnings: list[str]
    lastHandledReconcileAt: str
    testMemo: MemoStatus
