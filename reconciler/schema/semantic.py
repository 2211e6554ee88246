"""Checks beyond the JSON Schema: contradictions and traps a schema cannot express.

They run on plain dicts (the validate path never imports pydantic) and only read values
defensively, so they are safe on documents the schema rejected.  Each finding is an
:class:`Finding` with a path inside its document; the validate core turns it into a
:class:`~reconciler.schema.diagnostics.Diagnostic`.  ``--strict`` turns warnings into
errors.

Why these and not more: each one predicts a connection-test failure or a security
downgrade from the spec alone, or a conflict across the input set (two selected relays,
a dangling provider reference) that no single-document schema can see.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from reconciler.schema.diagnostics import JsonPath, Severity
from reconciler.schema.schemas import KIND_OAUTH2, KIND_SMTP

IMPLICIT_TLS_CLASS = "javax.net.ssl.SSLSocketFactory"
"""Mirrors ``reconciler.resources.IMPLICIT_TLS_CLASS`` (a test checks they agree)."""
IMPLICIT_TLS_PORTS = {465}
STARTTLS_PORTS = {25, 587, 2525}


class Finding(NamedTuple):
    path: JsonPath
    severity: Severity
    message: str


class Resource(NamedTuple):
    """What cross-document checks need to know about one document (not the document
    itself: a 10,000-document stream must not stay in memory for these checks)."""

    key: int  # the caller's handle for the document
    kind: str
    namespace: str
    name: str | None
    authentication: Any
    provider_ref: Any
    selected: bool
    priority: Any = 0  # spec.priority: selected relays with distinct priorities are standbys

    @classmethod
    def of(cls, key: int, kind: str, namespace: str, name: str | None,
           doc: dict[str, Any]) -> Resource:
        spec = _obj(doc.get("spec"))
        return cls(key, kind, namespace, name, spec.get("authentication"),
                   _obj(spec.get("oauth2ProviderRef")).get("name"), spec.get("selected") is True,
                   spec.get("priority", 0))


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def check_document(doc: dict[str, Any], kind: str, *, allow_status: bool) -> list[Finding]:
    out: list[Finding] = []
    if "status" in doc and not allow_status:
        out.append(Finding(("status",), "error",
                           "status is written by the reconciler, not by users: remove it "
                           "(pass --allow-status to check `smtpctl get -o yaml` output)"))
    spec = _obj(doc.get("spec"))
    if kind == KIND_SMTP:
        out.extend(_smtp(spec))
    elif kind == KIND_OAUTH2:
        out.extend(_oauth2(spec))
    return out


def _smtp(spec: dict[str, Any]) -> Iterable[Finding]:
    sf = _obj(spec.get("socketFactory"))
    implicit = sf.get("class") == IMPLICIT_TLS_CLASS
    port = spec.get("port")
    sf_port = sf.get("port")
    connect_port = sf_port if implicit and isinstance(sf_port, int) else port
    start_tls = spec.get("startTLS") is True
    auth = spec.get("authentication")

    if implicit and start_tls:
        yield Finding(("spec", "startTLS"), "error",
                      "startTLS: true contradicts implicit TLS (socketFactory.class "
                      f"{IMPLICIT_TLS_CLASS}): the connection is encrypted from the first byte "
                      "and STARTTLS is never offered; remove one of them")
    if implicit and sf.get("fallback", True) is True:
        yield Finding(("spec", "socketFactory", "fallback"), "warning",
                      "socketFactory.fallback is true (the default): when implicit TLS fails "
                      "the connection is retried in plaintext, a downgrade path (credentials "
                      "are never sent over it); set fallback: false")
    if not implicit and isinstance(port, int) and port in IMPLICIT_TLS_PORTS:
        yield Finding(("spec", "port"), "warning",
                      f"port {port} expects implicit TLS: set socketFactory: {{class: "
                      f"{IMPLICIT_TLS_CLASS}, port: {port}, fallback: false}}; STARTTLS or "
                      "plaintext on this port usually ends in 'Read timed out'")
    if implicit and isinstance(connect_port, int) and connect_port in STARTTLS_PORTS:
        where = ("spec", "socketFactory", "port") if isinstance(sf_port, int) else ("spec", "port")
        yield Finding(where, "warning",
                      f"port {connect_port} normally speaks plaintext/STARTTLS, not implicit "
                      "TLS: use startTLS: true without socketFactory, or port 465")
    if "port" in sf and "class" not in sf:
        yield Finding(("spec", "socketFactory", "port"), "warning",
                      "socketFactory.port has no effect without socketFactory.class")
    if auth in ("UsernamePassword", "OAuth2") and not implicit and not start_tls:
        if spec.get("allowPlaintextAuth") is True:
            yield Finding(("spec", "allowPlaintextAuth"), "warning",
                          "credentials will be sent over an unencrypted connection "
                          "(allowPlaintextAuth: true); use only on a trusted network")
        else:
            yield Finding(("spec", "startTLS"), "warning",
                          "no TLS is configured, so the connection test will refuse to send "
                          "credentials (PlaintextAuthRefused): set startTLS: true or implicit "
                          "TLS (socketFactory), or allowPlaintextAuth: true on a trusted network")
    if _obj(spec.get("tls")).get("verify") is False:
        yield Finding(("spec", "tls", "verify"), "warning",
                      "certificate verification is disabled: anyone on the path can read the "
                      "credentials; add the CA with tls.caBundleFrom instead")
    yield from _refresh(spec)
    username = spec.get("username")
    if auth == "None" and "from" not in spec and "username" not in spec:
        yield Finding(("spec",), "warning",
                      "no sender address: with authentication None and no username, set "
                      "spec.from (the connection test's MAIL FROM)")
    if "from" not in spec and isinstance(username, str) and "@" not in username:
        yield Finding(("spec", "username"), "warning",
                      f"mail would be sent as {username!r}, which is not an email address: "
                      "set spec.from to the sender address")


def _refresh(spec: dict[str, Any]) -> Iterable[Finding]:
    """refreshInterval under the floor, or too frequent for a provider that throttles
    logins (the engine applies the same rule: reconciler.refresh)."""
    from reconciler.durations import format_duration, parse_duration
    from reconciler.refresh import REFRESH_FLOOR, THROTTLED_MINIMUM, refresh_warnings

    raw, host = spec.get("refreshInterval", "1h"), spec.get("host")
    if not isinstance(raw, str) or not isinstance(host, str):
        return
    try:
        seconds = parse_duration(raw).total_seconds()
    except ValueError:
        return  # the schema reports it
    warnings = refresh_warnings(host, seconds)
    if "RefreshIntervalRaised" in warnings:
        yield Finding(("spec", "refreshInterval"), "warning",
                      f"refreshInterval {raw} is below the floor of "
                      f"{format_duration(REFRESH_FLOOR)}: every re-verification is a login, "
                      f"so {format_duration(REFRESH_FLOOR)} is used")
    if "FrequentLogins" in warnings:
        yield Finding(("spec", "refreshInterval"), "warning",
                      f"{host} throttles logins: re-verifying every "
                      f"{format_duration(max(seconds, REFRESH_FLOOR))} can get the account "
                      f"rate-limited or locked; use {format_duration(THROTTLED_MINIMUM)} or "
                      "more")


def _oauth2(spec: dict[str, Any]) -> Iterable[Finding]:
    grant = spec.get("grantType")
    if grant == "ClientCredentials" and "refreshTokenFrom" in spec:
        yield Finding(("spec", "refreshTokenFrom"), "warning",
                      "refreshTokenFrom is ignored by the ClientCredentials grant")
    if grant != "AuthorizationCode" and "authorizationEndpoint" in spec:
        yield Finding(("spec", "authorizationEndpoint"), "warning",
                      "authorizationEndpoint is used only by the AuthorizationCode grant")
    scopes = spec.get("scopes")
    if grant == "ClientCredentials" and (scopes is None or scopes == [] or scopes == ""):
        yield Finding(("spec",), "warning",
                      "no scopes: most providers need one for the ClientCredentials grant "
                      "(Microsoft 365: https://outlook.office365.com/.default)")


def check_set(resources: list[Resource]) -> list[tuple[int, Finding]]:
    """Cross-document checks over everything validated in one run."""
    out: list[tuple[int, Finding]] = []
    providers = {(r.namespace, r.name) for r in resources if r.kind == KIND_OAUTH2}
    seen: dict[tuple[str, str, str], int] = {}
    selected: dict[tuple[str, Any], str] = {}
    for r in resources:
        if r.name is not None:
            ident = (r.kind, r.namespace, r.name)
            if ident in seen:
                out.append((r.key, Finding(("metadata", "name"), "error",
                                           f"{r.kind} {r.namespace}/{r.name} is defined more "
                                           "than once in the input: remove one (which one "
                                           "is meant cannot be guessed)")))
            seen[ident] = r.key
        if r.kind != KIND_SMTP:
            continue
        ref = r.provider_ref
        if r.authentication == "OAuth2" and isinstance(ref, str) \
                and (r.namespace, ref) not in providers:
            out.append((r.key, Finding(("spec", "oauth2ProviderRef", "name"), "warning",
                                       f"no OAuth2Provider {ref!r} in namespace "
                                       f"{r.namespace!r} in the input")))
        if r.selected:
            # Several selected relays are the supported standby setup when their
            # spec.priority differ (the lowest Ready one is used); an equal priority is a tie
            # that only age decides - almost never what was meant.
            slot = (r.namespace, r.priority)
            if slot in selected:
                out.append((r.key, Finding(("spec", "selected"), "warning",
                                           f"{selected[slot]!r} is also selected in "
                                           f"namespace {r.namespace!r} with the same "
                                           f"priority ({r.priority}): only one relay per "
                                           "namespace is used and age decides which; give "
                                           "the standby a higher spec.priority (lower "
                                           "values are preferred)")))
            else:
                selected[slot] = r.name or "?"
    return out
