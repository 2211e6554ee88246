"""The relay in use in a form an application can consume: JSON/YAML, ``SMTP_*``, JavaMail.

Every form renders the **active record** (``status.active``, built by
``reconciler.engine.record`` from the verdict of the test that passed), never the latest
spec: the host, port and TLS mode the passing connection used, the TLS trust it relied
on, readiness and the last success time.  A broken update never reaches applications.

Secrets: the record holds references and keyed versions only.  A value is handed out
(``smtpctl get active --reveal``, the operator's published Secret) only when its current
version is the tested one - :func:`require_tested` is that rule, shared by both runtimes;
otherwise :class:`NotTested` says why and nothing is handed out.

The operator publishes the same keys in its Secret (``smtp-active-relay``), so
:data:`ENV_KEYS` is a contract shared by both runtimes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.secret import Secret

# The SMTP_* key names (env output of `smtpctl get active`, keys of the published Secret).
ENV_HOST = "SMTP_HOST"
ENV_PORT = "SMTP_PORT"
ENV_TLS_MODE = "SMTP_TLS_MODE"  # starttls | implicit | none (the mode that passed)
ENV_STARTTLS = "SMTP_STARTTLS"  # true | false
ENV_IMPLICIT_TLS = "SMTP_IMPLICIT_TLS"  # true | false
ENV_TLS_VERIFY = "SMTP_TLS_VERIFY"  # true | false: verify certificate and host name
ENV_TLS_SERVER_NAME = "SMTP_TLS_SERVER_NAME"  # the name the certificate was checked against
ENV_TLS_MIN_VERSION = "SMTP_TLS_MIN_VERSION"  # 1.2 | 1.3
ENV_TLS_CA_FILE = "SMTP_TLS_CA_FILE"  # the CA bundle file that was trusted (file: refs)
ENV_TLS_CA_REF = "SMTP_TLS_CA_REF"  # where the trusted CA bundle comes from
ENV_TLS_CA_PEM = "SMTP_TLS_CA_PEM"  # the trusted CA bundle itself (the published Secret)
ENV_CERT_NOT_AFTER = "SMTP_TLS_CERT_NOT_AFTER"  # the relay certificate's expiry (RFC 3339)
ENV_AUTH = "SMTP_AUTH"  # UsernamePassword | OAuth2 | None
ENV_USERNAME = "SMTP_USERNAME"
ENV_FROM = "SMTP_FROM"
ENV_PASSWORD = "SMTP_PASSWORD"  # noqa: S105 - a key name; the value only with --reveal
ENV_PASSWORD_REF = "SMTP_PASSWORD_REF"  # noqa: S105 - where the password comes from
ENV_OAUTH2_TOKEN = "SMTP_OAUTH2_TOKEN"  # noqa: S105 - a fresh access token (--reveal)
ENV_OAUTH2_TOKEN_EXPIRES = "SMTP_OAUTH2_TOKEN_EXPIRES_AT"  # noqa: S105 - RFC 3339
ENV_OAUTH2_PROVIDER = "SMTP_OAUTH2_PROVIDER"
ENV_RELAY = "SMTP_RELAY"  # namespace/name of the ExternalSmtp
ENV_GENERATION = "SMTP_GENERATION"
ENV_READY = "SMTP_READY"  # true | false: the configuration handed out passed its latest test
ENV_LAST_SUCCESS = "SMTP_LAST_SUCCESS"  # when it last passed (RFC 3339)
ENV_KEYS: tuple[str, ...] = (
    ENV_HOST, ENV_PORT, ENV_TLS_MODE, ENV_STARTTLS, ENV_IMPLICIT_TLS, ENV_TLS_VERIFY,
    ENV_TLS_SERVER_NAME, ENV_TLS_MIN_VERSION, ENV_TLS_CA_FILE, ENV_TLS_CA_REF, ENV_TLS_CA_PEM,
    ENV_CERT_NOT_AFTER, ENV_AUTH, ENV_USERNAME, ENV_FROM, ENV_PASSWORD, ENV_PASSWORD_REF,
    ENV_OAUTH2_TOKEN, ENV_OAUTH2_TOKEN_EXPIRES, ENV_OAUTH2_PROVIDER, ENV_RELAY, ENV_GENERATION,
    ENV_READY, ENV_LAST_SUCCESS,
)


class NotTested(Exception):
    """A value whose current version is not the one the passing test used."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what
        self.message = message


def require_tested(record: Mapping[str, Any], what: str, current_version: str | None) -> None:
    """Raise :class:`NotTested` unless ``current_version`` (a keyed hash, never a value) is
    the version of ``what`` the record's test used.

    ``what``: ``password`` or ``oauth2`` (``record.credentialVersion``), or ``caBundle``
    (``record.tls.caBundleVersion``).
    """
    if what == "caBundle":
        tested = (record.get("tls") or {}).get("caBundleVersion")
        name = "the CA bundle"
    else:
        tested = record.get("credentialVersion")
        name = "the password" if what == "password" else "the OAuth 2.0 provider's configuration"
    gen = record.get("generation")
    if not tested:
        raise NotTested(what, f"{name} of generation {gen} cannot be checked: the active record "
                              "holds no tested version of it (records written by an earlier "
                              "smtpctl may lack it): re-verify the relay (`smtpctl reconcile "
                              "--force`) to record one")
    if current_version != tested:
        if what == "oauth2":
            raise NotTested(what, f"{name} of generation {gen} is not the one the relay's test "
                                  "obtained its access token with: the provider's spec or "
                                  "secrets changed since, and the relay has not passed a test "
                                  "with them yet; nothing untested is handed out")
        raise NotTested(what, f"{name} of generation {gen} is not the value that passed its "
                              "test: it changed since, and the new value has not passed (see "
                              "the relay's Ready condition); nothing untested is handed out")


@dataclass(frozen=True, slots=True)
class ActiveRelayView:
    """The active record of one relay, with what a form needs around it."""

    namespace: str
    name: str
    summary: Mapping[str, Any]  # status.active (an ActiveRecord)
    ca_pem: str | None = None  # the trusted CA bundle (published Secret), already checked
    token_expires_at: str | None = None  # of a revealed/published access token

    @property
    def tls_mode(self) -> str:
        return str(self.summary.get("tlsMode", "none"))

    @property
    def tls(self) -> Mapping[str, Any]:
        tls = self.summary.get("tls")
        return tls if isinstance(tls, Mapping) else {}

    @property
    def ready(self) -> bool:
        """The configuration handed out passed its latest test (it is not failing)."""
        return self.summary.get("health") != "Failing"

    @property
    def last_success(self) -> str | None:
        value = self.summary.get("verifiedAt")
        return str(value) if value else None

    def reference(self, key: str = "passwordFrom", src: Mapping[str, Any] | None = None,
                  ) -> str | None:
        ref: Mapping[str, Any] = (src if src is not None else self.summary).get(key) or {}
        if "env" in ref:
            return f"env:{ref['env']}"
        if "file" in ref:
            return f"file:{ref['file']}"
        skr = ref.get("secretKeyRef")
        if skr:
            return f"secret:{skr.get('name')}/{skr.get('key')}"
        return None

    @property
    def ca_file(self) -> str | None:
        ref = self.tls.get("caBundleFrom") or {}
        return str(ref["file"]) if "file" in ref else None


def view_of(namespace: str, name: str, status: Mapping[str, Any]) -> ActiveRelayView:
    """The view of a relay's status (``status.active`` must be present)."""
    return ActiveRelayView(namespace, name, dict(status.get("active") or {}))


def _bool(v: bool) -> str:
    return "true" if v else "false"


def to_env(view: ActiveRelayView, secret: Secret | None = None) -> dict[str, str]:
    """``SMTP_*`` variables (values revealed only when ``secret`` is given)."""
    s = view.summary
    out = {
        ENV_RELAY: f"{view.namespace}/{view.name}",
        ENV_GENERATION: str(s.get("generation", "")),
        ENV_HOST: str(s.get("host", "")),
        ENV_PORT: str(s.get("port", "")),
        ENV_TLS_MODE: view.tls_mode,
        ENV_STARTTLS: _bool(view.tls_mode == "starttls"),
        ENV_IMPLICIT_TLS: _bool(view.tls_mode == "implicit"),
    }
    tls = view.tls
    if view.tls_mode != "none":
        out[ENV_TLS_VERIFY] = _bool(tls.get("verify", True) is not False)
        out[ENV_TLS_SERVER_NAME] = str(tls.get("serverName") or s.get("host", ""))
        out[ENV_TLS_MIN_VERSION] = str(tls.get("minVersion") or "1.2")
        ca_ref = view.reference("caBundleFrom", tls)
        if ca_ref:
            out[ENV_TLS_CA_REF] = ca_ref
        if view.ca_file:
            out[ENV_TLS_CA_FILE] = view.ca_file
        if view.ca_pem is not None:
            out[ENV_TLS_CA_PEM] = view.ca_pem
        if tls.get("certificateNotAfter"):
            out[ENV_CERT_NOT_AFTER] = str(tls["certificateNotAfter"])
    out[ENV_AUTH] = str(s.get("authentication", "None"))
    if s.get("username"):
        out[ENV_USERNAME] = str(s["username"])
    if s.get("from"):
        out[ENV_FROM] = str(s["from"])
    if s.get("authentication") == "UsernamePassword":
        ref = view.reference()
        if ref:
            out[ENV_PASSWORD_REF] = ref
        if secret is not None:
            out[ENV_PASSWORD] = secret.reveal()
    if s.get("authentication") == "OAuth2":
        out[ENV_OAUTH2_PROVIDER] = str(s.get("oauth2Provider", ""))
        if secret is not None:
            out[ENV_OAUTH2_TOKEN] = secret.reveal()
            if view.token_expires_at:
                out[ENV_OAUTH2_TOKEN_EXPIRES] = view.token_expires_at
    out[ENV_READY] = _bool(view.ready)
    if view.last_success:
        out[ENV_LAST_SUCCESS] = view.last_success
    return out


def render_env(view: ActiveRelayView, secret: Secret | None = None) -> str:
    """Shell-compatible ``KEY='value'`` lines (single-quoted, quotes escaped)."""
    lines = []
    for k, v in to_env(view, secret).items():
        lines.append(f"{k}='" + v.replace("'", "'\\''") + "'")
    return "\n".join(lines) + "\n"


def to_json(view: ActiveRelayView, secret: Secret | None = None) -> dict[str, Any]:
    """The record as one object (``get active -o json|yaml``)."""
    s = view.summary
    out: dict[str, Any] = {
        "relay": {"namespace": view.namespace, "name": view.name},
        "generation": s.get("generation"), "host": s.get("host"), "port": s.get("port"),
        "tlsMode": view.tls_mode, "authentication": s.get("authentication"),
        "username": s.get("username"), "from": s.get("from"),
        "ready": view.ready, "lastSuccessTime": view.last_success,
    }
    if s.get("fallbackUsed"):
        out["fallbackUsed"] = True
    if view.tls_mode != "none":
        tls: dict[str, Any] = {k: v for k, v in view.tls.items() if k != "caBundleVersion"}
        if view.ca_file:
            tls["caFile"] = view.ca_file
        if view.ca_pem is not None:
            tls["caPem"] = view.ca_pem
        out["tls"] = tls
    if s.get("health") == "Failing":
        out["failingSince"] = s.get("failingSince")
        out["failure"] = s.get("failure")
    if s.get("authentication") == "UsernamePassword":
        out["passwordFrom"] = s.get("passwordFrom")
        if secret is not None:
            out["password"] = secret.reveal()
    if s.get("authentication") == "OAuth2":
        out["oauth2Provider"] = s.get("oauth2Provider")
        if secret is not None:
            out["accessToken"] = secret.reveal()
            if view.token_expires_at:
                out["accessTokenExpiresAt"] = view.token_expires_at
    return {k: v for k, v in out.items() if v is not None}


def render_json(view: ActiveRelayView, secret: Secret | None = None) -> str:
    return json.dumps(to_json(view, secret), indent=2) + "\n"


def render_yaml(view: ActiveRelayView, secret: Secret | None = None) -> str:
    import yaml

    text: str = yaml.safe_dump(to_json(view, secret), sort_keys=False,
                               default_flow_style=False, allow_unicode=True)
    return text


_PROTOCOLS = {"1.2": "TLSv1.2 TLSv1.3", "1.3": "TLSv1.3"}


def to_javamail(view: ActiveRelayView, secret: Secret | None = None) -> dict[str, str]:
    """Jakarta Mail ``mail.smtp.*`` properties for the connection that passed.

    ``socketFactory.fallback`` is always false: JavaMail's fallback is a silent downgrade
    to plaintext (guarantee 5, docs/architecture.md), and what is handed out is the one
    connection that passed (with a fallback pass, that is the plain/STARTTLS connection to
    ``spec.port`` - not the implicit-TLS port that refused).  Certificate checks follow the record:
    ``checkserveridentity`` is true only when the test verified the certificate; a test
    that ran with verification off gives ``ssl.trust=*`` - exactly what passed, no more.
    """
    s = view.summary
    auth = s.get("authentication", "None")
    props = {
        "mail.transport.protocol": "smtp",
        "mail.smtp.host": str(s.get("host", "")),
        "mail.smtp.port": str(s.get("port", "")),
        "mail.smtp.auth": _bool(auth != "None"),
    }
    if view.tls_mode == "starttls":
        props["mail.smtp.starttls.enable"] = "true"
        props["mail.smtp.starttls.required"] = "true"
    if view.tls_mode == "implicit":
        props["mail.smtp.ssl.enable"] = "true"
        props["mail.smtp.socketFactory.port"] = str(s.get("port", ""))
        props["mail.smtp.socketFactory.class"] = "javax.net.ssl.SSLSocketFactory"
        props["mail.smtp.socketFactory.fallback"] = "false"
    if view.tls_mode != "none":
        verify = view.tls.get("verify", True) is not False
        props["mail.smtp.ssl.checkserveridentity"] = _bool(verify)
        if not verify:
            props["mail.smtp.ssl.trust"] = "*"
        props["mail.smtp.ssl.protocols"] = _PROTOCOLS.get(
            str(view.tls.get("minVersion") or "1.2"), "TLSv1.2 TLSv1.3")
    if s.get("username"):
        props["mail.smtp.user"] = str(s["username"])
    if s.get("from"):
        props["mail.smtp.from"] = str(s["from"])
        props["mail.from"] = str(s["from"])
    if auth == "OAuth2":
        props["mail.smtp.auth.mechanisms"] = "XOAUTH2"
    if secret is not None:
        props["mail.smtp.password"] = secret.reveal()
    return props


def render_javamail(view: ActiveRelayView, secret: Secret | None = None) -> str:
    s = view.summary
    head = [f"# smtpctl get active: {view.namespace}/{view.name} generation "
            f"{s.get('generation')}",
            f"# ready: {_bool(view.ready)}"
            + (f" (last success {view.last_success})" if view.last_success else "")]
    if s.get("fallbackUsed"):
        head.append("# implicit TLS failed in the test; this is the fallback connection that "
                    "passed")
    tls = view.tls
    if view.tls_mode != "none":
        host = str(s.get("host", ""))
        name = str(tls.get("serverName") or host)
        ca = view.reference("caBundleFrom", tls)
        if ca:
            head.append(f"# trust: the test trusted the CA bundle {ca} (plus the system "
                        f"store); JavaMail reads CAs from the JVM trust store: import it "
                        f"(keytool -importcert) and set javax.net.ssl.trustStore")
        if name != host and tls.get("verify", True) is not False:
            head.append(f"# trust: the certificate was verified against the name {name}, not "
                        f"{host}; JavaMail checks mail.smtp.host - connect by that name")
        if tls.get("verify") is False:
            head.append("# trust: the test ran with certificate verification OFF "
                        "(spec.tls.verify: false); so does this configuration")
    if secret is None and s.get("authentication") == "UsernamePassword":
        head.append(f"# password: {view.reference()} (use --reveal to include it)")
    if secret is None and s.get("authentication") == "OAuth2":
        head.append("# OAuth 2.0: the application obtains its access token from the provider "
                    "(mail.smtp.password); get never contacts a token endpoint")
    body = [f"{k}={_escape_prop(v)}" for k, v in to_javamail(view, secret).items()]
    return "\n".join([_comment(h) for h in head] + body) + "\n"


def _escape_prop(v: str) -> str:
    """A value for a Java ``.properties`` line: ``\\r``, ``\\n`` and every other control
    or non-ASCII character escaped (a ``\\r`` ends a line for Java: a username holding one
    could otherwise inject ``mail.smtp.host``), as are ``\\ = : # !``."""
    out = []
    for c in v:
        if c in "\\=:#!":
            out.append("\\" + c)
        elif c in _NAMED:
            out.append(_NAMED[c])
        elif ord(c) < 0x20 or ord(c) > 0x7E:
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(c))
        else:
            out.append(c)
    return "".join(out)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}


def _utf16_units(c: str) -> list[int]:
    data = c.encode("utf-16-be")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def _comment(text: str) -> str:
    """A comment line's text: no line break may end the comment early."""
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) in (0x7F, 0x85, 0x2028, 0x2029)
                   else c for c in text)


def describe_lines(record: Mapping[str, Any] | None, generation: int) -> list[str]:
    """``smtpctl describe``'s lines for the active record (the connection handed out)."""
    if not record:
        return ["Active:       none (never passed a test)"]
    view = ActiveRelayView("", "", record)
    same = record.get("generation") == generation
    out = [f"Active:       generation {record.get('generation')} "
           f"({record.get('host')}:{record.get('port')}, {view.tls_mode}, "
           f"{record.get('authentication')})"
           + ("" if same else f"  <- latest generation {generation} is not in use")]
    if record.get("fallbackUsed"):
        out.append("  connection:  the socketFactory fallback (implicit TLS refused in the test)")
    tls = view.tls
    if view.tls_mode != "none":
        parts = [f"verify={'yes' if tls.get('verify', True) is not False else 'NO'}",
                 f"serverName={tls.get('serverName') or record.get('host')}",
                 f"minVersion={tls.get('minVersion') or '1.2'}"]
        ca = view.reference("caBundleFrom", tls)
        if ca:
            parts.append(f"ca={ca}")
        if tls.get("version"):
            parts.append(f"negotiated={tls['version']}")
        out.append("  tls:         " + " ".join(parts))
        if tls.get("certificateNotAfter"):
            out.append(f"  certificate: expires {tls['certificateNotAfter']}")
    cred = view.reference()
    if cred or record.get("oauth2Provider"):
        what = cred or f"OAuth2Provider {record.get('oauth2Provider')}"
        out.append(f"  credential:  {what} (tested version {record.get('credentialVersion')})")
    health = "FAILING" if not view.ready else "healthy"
    line = f"  health:      {health}; last success {view.last_success or '-'}"
    if not view.ready:
        failure = record.get("failure") or {}
        line += f"; failing since {record.get('failingSince')} ({failure.get('reason')})"
    out.append(line)
    return out


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One relay's health for metrics (``smtpctl_active_relay_*``)."""

    namespace: str
    name: str
    selected: bool
    ready: bool  # the configuration handed out passed its latest test
    last_success: float | None  # epoch of active.verifiedAt
    certificate_not_after: float | None  # epoch of active.tls.certificateNotAfter


def health_sample(namespace: str, name: str, status: Mapping[str, Any]) -> HealthSample | None:
    """The sample of a relay with an active record (None without one)."""
    from reconciler.engine.policy import epoch

    record = status.get("active")
    if not record:
        return None
    view = ActiveRelayView(namespace, name, record)
    not_after = view.tls.get("certificateNotAfter")
    return HealthSample(namespace, name, bool(status.get("selected")), view.ready,
                        epoch(view.last_success) if view.last_success else None,
                        epoch(str(not_after)) if not_after else None)


RENDERERS = {"json": render_json, "yaml": render_yaml, "env": render_env,
             "javamail": render_javamail}
