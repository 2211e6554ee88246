"""The selected relay in a form an application can consume: JSON, ``SMTP_*`` env, JavaMail.

The source is the relay's **last-known-good** summary (``status.active``), never the
latest spec: a broken update must not reach applications.  Credentials appear as
references; the caller passes ``secret`` only for ``--reveal`` (to stdout, never to
disk).  The operator publishes the same keys in its Secret (``smtp-active-relay``), so
:data:`ENV_KEYS` is a contract shared by both runtimes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from reconciler.secret import Secret

# The SMTP_* key names (env output of `smtpctl get active`, keys of the published Secret).
ENV_HOST = "SMTP_HOST"
ENV_PORT = "SMTP_PORT"
ENV_TLS_MODE = "SMTP_TLS_MODE"  # starttls | implicit | none
ENV_STARTTLS = "SMTP_STARTTLS"  # true | false
ENV_IMPLICIT_TLS = "SMTP_IMPLICIT_TLS"  # true | false
ENV_AUTH = "SMTP_AUTH"  # UsernamePassword | OAuth2 | None
ENV_USERNAME = "SMTP_USERNAME"
ENV_FROM = "SMTP_FROM"
ENV_PASSWORD = "SMTP_PASSWORD"  # noqa: S105 - a key name; the value only with --reveal
ENV_PASSWORD_REF = "SMTP_PASSWORD_REF"  # noqa: S105 - where the password comes from
ENV_OAUTH2_TOKEN = "SMTP_OAUTH2_TOKEN"  # noqa: S105 - a fresh access token (--reveal)
ENV_OAUTH2_PROVIDER = "SMTP_OAUTH2_PROVIDER"
ENV_RELAY = "SMTP_RELAY"  # namespace/name of the ExternalSmtp
ENV_GENERATION = "SMTP_GENERATION"
ENV_KEYS: tuple[str, ...] = (
    ENV_HOST, ENV_PORT, ENV_TLS_MODE, ENV_STARTTLS, ENV_IMPLICIT_TLS, ENV_AUTH, ENV_USERNAME,
    ENV_FROM, ENV_PASSWORD, ENV_PASSWORD_REF, ENV_OAUTH2_TOKEN, ENV_OAUTH2_PROVIDER, ENV_RELAY,
    ENV_GENERATION,
)


@dataclass(frozen=True, slots=True)
class ActiveRelayView:
    namespace: str
    name: str
    summary: dict[str, Any]  # status.active

    @property
    def tls_mode(self) -> str:
        return str(self.summary.get("tlsMode", "none"))

    def reference(self) -> str | None:
        ref = self.summary.get("passwordFrom") or {}
        if "env" in ref:
            return f"env:{ref['env']}"
        if "file" in ref:
            return f"file:{ref['file']}"
        skr = ref.get("secretKeyRef")
        if skr:
            return f"secret:{skr.get('name')}/{skr.get('key')}"
        return None


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
        ENV_AUTH: str(s.get("authentication", "None")),
    }
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
    return out


def render_env(view: ActiveRelayView, secret: Secret | None = None) -> str:
    """Shell-compatible ``KEY='value'`` lines (single-quoted, quotes escaped)."""
    lines = []
    for k, v in to_env(view, secret).items():
        lines.append(f"{k}='" + v.replace("'", "'\\''") + "'")
    return "\n".join(lines) + "\n"


def to_json(view: ActiveRelayView, secret: Secret | None = None) -> dict[str, Any]:
    s = view.summary
    out: dict[str, Any] = {
        "relay": {"namespace": view.namespace, "name": view.name},
        "generation": s.get("generation"), "host": s.get("host"), "port": s.get("port"),
        "tlsMode": view.tls_mode, "authentication": s.get("authentication"),
        "username": s.get("username"), "from": s.get("from"),
    }
    if s.get("authentication") == "UsernamePassword":
        out["passwordFrom"] = s.get("passwordFrom")
        if secret is not None:
            out["password"] = secret.reveal()
    if s.get("authentication") == "OAuth2":
        out["oauth2Provider"] = s.get("oauth2Provider")
        if secret is not None:
            out["accessToken"] = secret.reveal()
    return {k: v for k, v in out.items() if v is not None}


def render_json(view: ActiveRelayView, secret: Secret | None = None) -> str:
    return json.dumps(to_json(view, secret), indent=2) + "\n"


def to_javamail(view: ActiveRelayView, secret: Secret | None = None) -> dict[str, str]:
    """Jakarta Mail ``mail.smtp.*`` properties.

    ``socketFactory.fallback`` is always false: JavaMail's fallback is a silent downgrade
    to plaintext (guarantee 5, docs/architecture.md), and the configuration was tested without it.
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
        props["mail.smtp.ssl.checkserveridentity"] = "true"
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
    head = [f"# smtpctl get active: {view.namespace}/{view.name} generation "
            f"{view.summary.get('generation')}"]
    if secret is None and view.summary.get("authentication") == "UsernamePassword":
        head.append(f"# password: {view.reference()} (use --reveal to include it)")
    if secret is None and view.summary.get("authentication") == "OAuth2":
        head.append("# OAuth 2.0: use --reveal to include a fresh access token "
                    "(mail.smtp.password)")
    body = [f"{k}={_escape_prop(v)}" for k, v in to_javamail(view, secret).items()]
    return "\n".join(head + body) + "\n"


def _escape_prop(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace("=", "\\=").replace(":", "\\:")
