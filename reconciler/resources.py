"""Typed models of the two resource kinds (the "resource types" layer: no I/O).

The JSON Schemas in ``schemas/`` are the single source of truth for what a valid manifest
is; these pydantic models must agree with them (``tests/test_schema_agreement.py`` runs a
corpus of good and bad manifests through both and demands the same verdicts).  The models
give the rest of the code typed access; the offline validator (``smtpctl validate``) uses
the JSON Schema directly so it never pays for importing pydantic.

Python names are snake_case; the wire names (aliases) are the Kubernetes camelCase names.
Always dump with ``by_alias=True``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

# Re-exported: many layers import them from here.
from reconciler.durations import format_duration as format_duration
from reconciler.durations import parse_duration as parse_duration

API_GROUP = "smtp.reconciler.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND_SMTP = "ExternalSmtp"
KIND_OAUTH2 = "OAuth2Provider"
IMPLICIT_TLS_CLASS = "javax.net.ssl.SSLSocketFactory"

Authentication = Literal["UsernamePassword", "OAuth2", "None"]
GrantType = Literal["ClientCredentials", "RefreshToken", "AuthorizationCode"]
TokenEndpointAuthMethod = Literal["client_secret_basic", "client_secret_post"]
ConditionStatus = Literal["True", "False", "Unknown"]
Stage = Literal[
    "validate", "credentials", "resolve", "connect", "tls", "banner", "ehlo", "starttls",
    "auth", "mail_from", "rcpt_to", "data", "quit",
]

# The regular expressions below are the ones in schemas/*.json, written so that Python's
# ``re`` and ECMA-262 (jsonschema_rs, Kubernetes' RE2) agree: ``[0-9]`` not ``\d`` (which
# matches any Unicode digit in Python), and ``\Z``/fullmatch where the schema says ``$``
# (Python's ``$`` also matches before a trailing newline).
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
_LOOPBACK_URL_RE = re.compile(
    r"^http://(localhost|127(\.[0-9]{1,3}){3}|\[::1\])(:[0-9]{1,5})?(/|\Z)"
)
# No control characters (a CR in a username could inject a JavaMail property, an escape
# could drive a terminal): the same pattern as the schema's, ECMA-262/RE2/Rust-compatible.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_LITERAL_SECRET_FIELDS = {
    "password": "passwordFrom",
    "clientSecret": "clientSecretFrom",
    "refreshToken": "refreshTokenFrom",
}


def is_loopback_url(url: str) -> bool:
    return bool(_LOOPBACK_URL_RE.match(url))


def valid_host(host: str) -> bool:
    """A DNS name or an IP literal; no scheme, no port, no path.

    IPv4 literals match the host-name pattern; IPv6 literals are accepted without a zone
    (``%eth0``), which the JSON Schema's IPv6 pattern does not allow either.
    """
    if _HOSTNAME_RE.match(host):
        return True
    if "%" in host or ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
        return True
    except ValueError:
        return False


def _empty_list() -> list[Any]:
    """``default_factory=list``, as a Python function: pydantic asks for a default
    factory's signature (``inspect.signature``), which for the built-in ``list`` parses its
    text signature with ``tokenize`` - compiling tokenize's patterns, ~4 ms of every
    process that imports this module (tests/test_resources_import.py)."""
    return []


def _empty_dict() -> dict[str, Any]:
    """``default_factory=dict`` (see :func:`_empty_list`)."""
    return {}


class _Model(BaseModel):
    model_config = ConfigDict(
        hide_input_in_errors=True, populate_by_name=True, extra="forbid", frozen=True
    )


# --- references -----------------------------------------------------------------------


class SecretKeySelector(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class SecretRef(_Model):
    """Where a secret value comes from: exactly one of secretKeyRef, env, file."""

    secret_key_ref: SecretKeySelector | None = Field(default=None, alias="secretKeyRef")
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=253)
    file: str | None = Field(default=None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [x for x in (self.secret_key_ref, self.env, self.file) if x is not None]
        if len(given) != 1:
            raise ValueError("exactly one of secretKeyRef, env or file must be set")
        return self

    @property
    def source(self) -> Literal["secretKeyRef", "env", "file"]:
        if self.secret_key_ref is not None:
            return "secretKeyRef"
        return "env" if self.env is not None else "file"

    def describe(self) -> str:
        """A human description of the reference (never a value)."""
        if self.secret_key_ref is not None:
            return f"Secret {self.secret_key_ref.name!r} key {self.secret_key_ref.key!r}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return f"file {self.file}"

    def wire(self) -> dict[str, Any]:
        """The reference in its wire form, as ``model_dump(by_alias=True,
        exclude_none=True)`` writes it (exactly one key), built without pydantic's
        serializer: the engine writes it into every passed test's ``status.active``
        (tests/test_engine_record_dumps.py checks the two agree)."""
        sel = self.secret_key_ref
        if sel is not None:
            return {"secretKeyRef": {"name": sel.name, "key": sel.key}}
        if self.env is not None:
            return {"env": self.env}
        return {"file": self.file}


class LocalObjectReference(_Model):
    name: str = Field(min_length=1, max_length=253)


# --- ExternalSmtp ---------------------------------------------------------------------


class SocketFactory(_Model):
    class_: Literal["javax.net.ssl.SSLSocketFactory"] | None = Field(default=None, alias="class")
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    fallback: StrictBool = True

    @model_validator(mode="after")
    def _port_with_class(self) -> SocketFactory:
        if self.class_ is not None and self.port is None:
            raise ValueError("socketFactory.port is required when socketFactory.class is set")
        return self


class TLSSpec(_Model):
    verify: StrictBool = True
    ca_bundle_from: SecretRef | None = Field(default=None, alias="caBundleFrom")
    server_name: str | None = Field(default=None, alias="serverName", min_length=1, max_length=253,
                                    pattern=NO_CONTROL)
    min_version: Literal["1.2", "1.3"] = Field(default="1.2", alias="minVersion")


class ConnectionTest(_Model):
    check_relay: StrictBool = Field(default=True, alias="checkRelay")
    pipeline_auth: StrictBool = Field(default=False, alias="pipelineAuth")
    probe_recipient: str | None = Field(default=None, alias="probeRecipient", max_length=320,
                                        pattern=NO_CONTROL)
    timeout_seconds: float = Field(default=30, alias="timeoutSeconds", ge=1, le=600, strict=True)


class ExternalSmtpSpec(_Model):
    host: str = Field(min_length=1, max_length=253)
    port: StrictInt = Field(ge=1, le=65535)
    authentication: Authentication
    start_tls: StrictBool = Field(default=False, alias="startTLS")
    username: str | None = Field(default=None, min_length=1, max_length=320, pattern=NO_CONTROL)
    password_from: SecretRef | None = Field(default=None, alias="passwordFrom")
    oauth2_provider_ref: LocalObjectReference | None = Field(
        default=None, alias="oauth2ProviderRef"
    )
    socket_factory: SocketFactory | None = Field(default=None, alias="socketFactory")
    selected: StrictBool = False
    from_: str | None = Field(default=None, alias="from", min_length=3, max_length=320,
                              pattern=NO_CONTROL)
    tls: TLSSpec = Field(default_factory=TLSSpec)
    allow_plaintext_auth: StrictBool = Field(default=False, alias="allowPlaintextAuth")
    connection_test: ConnectionTest = Field(default_factory=ConnectionTest, alias="connectionTest")
    refresh_interval: str = Field(default="1h", alias="refreshInterval", max_length=64)
    priority: StrictInt = Field(default=0, ge=0, le=65535)
    failback_delay: str = Field(default="5m", alias="failbackDelay", max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for literal, ref in _LITERAL_SECRET_FIELDS.items():
                if literal in data:
                    raise ValueError(
                        f"literal secrets are not allowed in a manifest: replace {literal} with "
                        f"{ref}: {{secretKeyRef: {{name: ..., key: ...}}}} (or env: NAME, "
                        f"file: PATH)"
                    )
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not valid_host(v):
            raise ValueError("must be a DNS name or an IP address, without scheme or port")
        return v

    @field_validator("refresh_interval", "failback_delay")
    @classmethod
    def _interval(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _auth_fields(self) -> ExternalSmtpSpec:
        a = self.authentication
        if a == "UsernamePassword":
            if self.password_from is None:
                raise ValueError("passwordFrom is required when authentication is UsernamePassword")
            if self.oauth2_provider_ref is not None:
                raise ValueError("oauth2ProviderRef is only allowed when authentication is OAuth2")
        elif a == "OAuth2":
            if self.oauth2_provider_ref is None:
                raise ValueError("oauth2ProviderRef is required when authentication is OAuth2")
            if self.password_from is not None:
                raise ValueError(
                    "passwordFrom is only allowed when authentication is UsernamePassword"
                )
        else:
            if self.password_from is not None or self.oauth2_provider_ref is not None:
                raise ValueError(
                    "passwordFrom and oauth2ProviderRef are not allowed when authentication is None"
                )
        if a != "None" and self.username is None:
            raise ValueError("username is required unless authentication is None")
        return self

    # --- derived values used by the probe and the engine ---
    @property
    def implicit_tls(self) -> bool:
        return self.socket_factory is not None and self.socket_factory.class_ is not None

    @property
    def connect_port(self) -> int:
        """The port of the first connection attempt (socket-factory port for implicit TLS)."""
        if self.implicit_tls and self.socket_factory and self.socket_factory.port:
            return self.socket_factory.port
        return self.port

    @property
    def tls_mode(self) -> Literal["implicit", "starttls", "none"]:
        if self.implicit_tls:
            return "implicit"
        return "starttls" if self.start_tls else "none"

    @property
    def sender(self) -> str | None:
        """The address mail is sent as (spec.from, defaulting to spec.username)."""
        return self.from_ or self.username

    @property
    def refresh_seconds(self) -> float:
        """``refreshInterval`` as written (see ``reconciler.engine.refresh`` for the floor)."""
        return parse_duration(self.refresh_interval).total_seconds()

    @property
    def failback_seconds(self) -> float:
        return parse_duration(self.failback_delay).total_seconds()


# --- OAuth2Provider ---------------------------------------------------------------------


# The OAuth2Provider models are built at their first use (``defer_build``), not at import:
# a run over ExternalSmtp resources only never builds them.  Same models, same validation,
# same JSON Schema (tests/test_resources_import.py).
_DEFERRED = ConfigDict(defer_build=True)


class OAuth2ProviderSpec(_Model):
    model_config = ConfigDict(**_Model.model_config, **_DEFERRED)

    grant_type: GrantType = Field(alias="grantType")
    client_id: str = Field(alias="clientId", min_length=1, max_length=16000)
    client_secret_from: SecretRef | None = Field(default=None, alias="clientSecretFrom")
    refresh_token_from: SecretRef | None = Field(default=None, alias="refreshTokenFrom")
    authorization_endpoint: str | None = Field(
        default=None, alias="authorizationEndpoint", max_length=2048)
    token_endpoint: str = Field(alias="tokenEndpoint", max_length=2048)
    revoke_endpoint: str | None = Field(default=None, alias="revokeEndpoint", max_length=2048)
    test_endpoint: str | None = Field(default=None, alias="testEndpoint", max_length=2048)
    # The CRD types scopes as a list (maxItems 64, items maxLength 1024); local manifests
    # may also give one space/comma separated string (at most 1024 characters).
    scopes: list[Annotated[str, Field(max_length=1024)]] = Field(default_factory=_empty_list)
    token_endpoint_auth_method: TokenEndpointAuthMethod = Field(
        default="client_secret_basic", alias="tokenEndpointAuthMethod"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secrets(cls, data: Any) -> Any:
        return ExternalSmtpSpec._no_literal_secrets(data)  # type: ignore[operator]

    @field_validator("scopes", mode="before")
    @classmethod
    def _normalise_scopes(cls, v: Any) -> Any:
        """Accept the original form's space- or comma-separated string (local manifests)."""
        if isinstance(v, str):
            if len(v) > 1024:
                raise ValueError("a scopes string may not be more than 1024 characters")
            return [s for s in re.split(r"[\s,]+", v) if s]
        if isinstance(v, list) and len(v) > 64:
            raise ValueError("at most 64 scopes")
        return v

    @field_validator("token_endpoint", "authorization_endpoint", "revoke_endpoint", "test_endpoint")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not (v.startswith("https://") or is_loopback_url(v)):
            raise ValueError("must be an https:// URL (http:// is allowed only for loopback hosts)")
        return v

    @model_validator(mode="after")
    def _grant_fields(self) -> OAuth2ProviderSpec:
        g = self.grant_type
        if g == "ClientCredentials" and self.client_secret_from is None:
            raise ValueError("clientSecretFrom is required for the ClientCredentials grant")
        if g in ("RefreshToken", "AuthorizationCode") and self.refresh_token_from is None:
            raise ValueError(f"refreshTokenFrom is required for the {g} grant")
        if g == "AuthorizationCode" and self.authorization_endpoint is None:
            raise ValueError("authorizationEndpoint is required for the AuthorizationCode grant")
        return self


# --- metadata and status -----------------------------------------------------------------


class ObjectMeta(BaseModel):
    """Kubernetes-style metadata; unknown fields are kept for round-tripping."""

    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="allow")

    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    namespace: str = Field(
        default="default", min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=_empty_dict)
    annotations: dict[str, str] = Field(default_factory=_empty_dict)
    generation: StrictInt | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")


class Condition(BaseModel):
    """A ``metav1.Condition``."""

    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True)

    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(alias="lastTransitionTime")
    observed_generation: StrictInt | None = Field(default=None, alias="observedGeneration")


class TestSummary(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True)

    passed: StrictBool | None = None
    stage: str | None = None
    reason: str | None = None
    message: str | None = None
    duration_seconds: float | None = Field(default=None, alias="durationSeconds", strict=True)
    generation: StrictInt | None = None
    warnings: list[str] = Field(default_factory=_empty_list)


class ActiveTLS(BaseModel):
    """The TLS trust a passing test relied on (``status.active.tls``)."""

    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="allow")

    verify: StrictBool | None = None
    server_name: str | None = Field(default=None, alias="serverName")
    min_version: Literal["1.2", "1.3"] | None = Field(default=None, alias="minVersion")
    ca_bundle_from: SecretRef | None = Field(default=None, alias="caBundleFrom")
    ca_bundle_version: str | None = Field(default=None, alias="caBundleVersion")
    version: str | None = None
    certificate_not_after: str | None = Field(default=None, alias="certificateNotAfter")


class ActiveFailure(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="allow")

    reason: str | None = None
    message: str | None = None


class ActiveRelay(BaseModel):
    """The connection that passed its test (last-known-good): ``status.active``."""

    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="allow")

    generation: StrictInt
    host: str
    port: StrictInt
    authentication: Authentication
    tls_mode: Literal["implicit", "starttls", "none"] = Field(alias="tlsMode")
    fallback_used: StrictBool | None = Field(default=None, alias="fallbackUsed")
    username: str | None = None
    from_: str | None = Field(default=None, alias="from")
    password_from: SecretRef | None = Field(default=None, alias="passwordFrom")
    oauth2_provider: str | None = Field(default=None, alias="oauth2Provider")
    credential_version: str | None = Field(default=None, alias="credentialVersion")
    tls: ActiveTLS | None = None
    digest: str | None = None
    verified_at: str | None = Field(default=None, alias="verifiedAt")
    health: Literal["Healthy", "Failing"] | None = None
    failing_since: str | None = Field(default=None, alias="failingSince")
    failure: ActiveFailure | None = None


class ExternalSmtpStatus(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="allow")

    observed_generation: StrictInt | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=_empty_list)
    selected: StrictBool = False
    active_generation: StrictInt | None = Field(default=None, alias="activeGeneration")
    active: ActiveRelay | None = None
    last_test_time: str | None = Field(default=None, alias="lastTestTime")
    last_successful_test_time: str | None = Field(default=None, alias="lastSuccessfulTestTime")
    last_test: TestSummary | None = Field(default=None, alias="lastTest")
    warnings: list[str] = Field(default_factory=_empty_list)
    last_handled_reconcile_at: str | None = Field(default=None, alias="lastHandledReconcileAt")


class OAuth2ProviderStatus(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="allow",
                              **_DEFERRED)

    observed_generation: StrictInt | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=_empty_list)
    last_token_time: str | None = Field(default=None, alias="lastTokenTime")
    warnings: list[str] = Field(default_factory=_empty_list)
    last_handled_reconcile_at: str | None = Field(default=None, alias="lastHandledReconcileAt")


class ExternalSmtp(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="forbid")

    api_version: Literal["smtp.reconciler.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ExternalSmtp"]
    metadata: ObjectMeta
    spec: ExternalSmtpSpec
    status: ExternalSmtpStatus | None = None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Manifests use the wire (camelCase) names only, as the JSON Schema says."""
        kwargs.setdefault("by_name", False)
        return super().model_validate(obj, **kwargs)


class OAuth2Provider(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True, extra="forbid",
                              **_DEFERRED)

    api_version: Literal["smtp.reconciler.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["OAuth2Provider"]
    metadata: ObjectMeta
    spec: OAuth2ProviderSpec
    status: OAuth2ProviderStatus | None = None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Manifests use the wire (camelCase) names only, as the JSON Schema says."""
        kwargs.setdefault("by_name", False)
        return super().model_validate(obj, **kwargs)


Resource = Annotated[ExternalSmtp | OAuth2Provider, Field(discriminator="kind")]


def parse_resource(doc: dict[str, Any]) -> ExternalSmtp | OAuth2Provider:
    """Build a typed resource from a manifest dict (raises pydantic.ValidationError)."""
    if doc.get("kind") == KIND_OAUTH2:
        return OAuth2Provider.model_validate(doc)
    return ExternalSmtp.model_validate(doc)
