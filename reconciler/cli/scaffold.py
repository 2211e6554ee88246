"""Manifests written for people: ``smtpctl init`` (well-known providers) and ``smtpctl
import`` (JavaMail ``mail.smtp.*`` and Spring ``spring.mail.*`` properties).

Both produce ordinary manifests with comments that say why each setting is there and
what is left to do.  Secrets are always *references* (``file:``, ``env:`` or
``secretKeyRef``): a value found in imported properties is never copied, the comment
says where to put it.  Every manifest produced here passes ``smtpctl validate --strict``
(tests/test_cli_onboarding.py checks each provider and import case).

Imports only PyYAML (and javaproperties for ``.properties`` files): both commands work in
the light install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "smtp.reconciler.dev/v1alpha1"
SSL_FACTORY = "javax.net.ssl.SSLSocketFactory"
SCHEMA_URL = "https://smtp.reconciler.dev/schemas/{}.v1alpha1.json"


class ScaffoldError(ValueError):
    """Input that cannot become a manifest (the message says why; exit 1)."""


@dataclass
class Manifest:
    doc: dict[str, Any]
    comments: dict[tuple[str, ...], str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.doc["metadata"].get("namespace", "default"))


# --- secret references ----------------------------------------------------------------------


def parse_secret(text: str) -> dict[str, Any]:
    """``file:PATH``, ``env:NAME`` or ``secret:NAME/KEY`` -> a SecretRef."""
    kind, sep, rest = text.partition(":")
    if sep and rest:
        if kind == "file":
            return {"file": rest}
        if kind == "env":
            return {"env": rest}
        if kind == "secret" and "/" in rest:
            name, key = rest.split("/", 1)
            return {"secretKeyRef": {"name": name, "key": key}}
    raise ScaffoldError(f"--secret {text!r}: expected file:PATH, env:NAME or secret:NAME/KEY")


def describe_ref(ref: Mapping[str, Any]) -> str:
    if "file" in ref:
        return f"the file {ref['file']}"
    if "env" in ref:
        return f"the environment variable {ref['env']}"
    skr = ref["secretKeyRef"]
    return f"key {skr['key']} of the Kubernetes Secret {skr['name']}"


def default_ref(name: str, what: str) -> dict[str, Any]:
    return {"file": f"secrets/{name}-{what}"}


# --- rendering ------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    import yaml

    if isinstance(value, str) and value and re.fullmatch(r"[A-Za-z0-9_./@:+-]+", value) and (
            not re.fullmatch(r"(?i)(y|n|yes|no|on|off|true|false|null|~|[0-9.eE+-]+)", value)):
        return value
    text = str(yaml.safe_dump(value, default_flow_style=True, width=1 << 16)).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


_FLOW_KEYS = {"passwordFrom", "clientSecretFrom", "refreshTokenFrom", "caBundleFrom",
              "oauth2ProviderRef"}


def _lines(node: Mapping[str, Any], path: tuple[str, ...], indent: int,
           comments: Mapping[tuple[str, ...], str]) -> list[str]:
    out: list[str] = []
    pad = " " * indent
    for key, value in node.items():
        here = (*path, key)
        note = comments.get(here)
        tail = f"  # {note}" if note else ""
        if isinstance(value, dict) and value and key not in _FLOW_KEYS:
            out.append(f"{pad}{key}:{tail}")
            out.extend(_lines(value, here, indent + 2, comments))
        elif isinstance(value, (dict, list)):
            out.append(f"{pad}{key}: {_flow(value)}{tail}")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}{tail}")
    return out


def _wrap(text: str, first: str, rest: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, 88, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def render(manifests: list[Manifest]) -> str:
    """YAML with comments, documents separated by ``---``."""
    docs = []
    for m in manifests:
        schema = "externalsmtp" if m.kind == "ExternalSmtp" else "oauth2provider"
        lines = [f"# yaml-language-server: $schema={SCHEMA_URL.format(schema)}"]
        lines += [w for h in m.header for w in _wrap(h, "# ", "#   ")]
        if m.notes:
            lines.append("# Before you apply:")
            lines += [w for n in m.notes for w in _wrap(n, "#  - ", "#    ")]
        lines += _lines(m.doc, (), 0, m.comments)
        docs.append("\n".join(lines) + "\n")
    return "---\n".join(docs)


def as_json(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(m.doc)) for m in manifests]


# --- init: well-known providers --------------------------------------------------------------


def _meta(name: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return meta


def init(key: str, *, name: str | None = None, namespace: str | None = None,
         username: str | None = None, sender: str | None = None,
         secret: dict[str, Any] | None = None, tenant: str | None = None,
         client_id: str | None = None) -> list[Manifest]:
    """The manifests for provider ``key`` (reconciler.wellknown.PROVIDERS)."""
    from reconciler.wellknown import BY_KEY

    p = BY_KEY.get(key)
    if p is None:
        raise ScaffoldError(f"unknown provider {key!r} (one of: {', '.join(BY_KEY)})")
    name = name or key
    user = username or p.username_hint
    sender_addr = sender or (user if "@" in user else "sender@example.com")
    spec: dict[str, Any] = {"host": p.host, "port": p.port}
    comments: dict[tuple[str, ...], str] = {}
    if p.tls == "implicit":
        spec["socketFactory"] = {"class": SSL_FACTORY, "port": p.port, "fallback": False}
        comments[("spec", "socketFactory")] = "implicit TLS: encrypted from the first byte"
        comments[("spec", "socketFactory", "fallback")] = "never fall back to plaintext"
    else:
        spec["startTLS"] = True
        comments[("spec", "startTLS")] = "submission on 587: STARTTLS before AUTH"
    spec["authentication"] = p.authentication
    spec["username"] = user
    comments[("spec", "username")] = {
        "sendgrid": "literally apikey",
        "ses": "the SES SMTP username (not the IAM access key id)",
        "postmark": "the Server API token (a token, not a secret: it is the login)",
    }.get(key, "the account that logs in")
    manifests: list[Manifest] = []
    provider_name = f"{name}-idp"
    # a note's command names what this scaffold prints, not the catalogue's key
    notes = [n.format(provider=provider_name, namespace=f" -n {namespace}" if namespace else "")
             for n in p.notes]
    if p.authentication == "UsernamePassword":
        ref = secret or default_ref(name, "password")
        spec["passwordFrom"] = ref
        comments[("spec", "passwordFrom")] = "a reference, never the value"
        notes.append(f"put the password into {describe_ref(ref)}")
    else:
        spec["oauth2ProviderRef"] = {"name": provider_name}
        manifests.append(_oauth_provider(p, provider_name, namespace, secret, tenant,
                                         client_id, notes))
    spec["from"] = sender_addr
    comments[("spec", "from")] = "the sender the relay must accept (MAIL FROM)"
    spec["selected"] = True
    comments[("spec", "selected")] = "the relay applications use (one per namespace)"
    doc = {"apiVersion": API_VERSION, "kind": "ExternalSmtp",
           "metadata": _meta(name, namespace), "spec": spec}
    relay = Manifest(doc, comments, [f"{p.title}: scaffolded by `smtpctl init {key}`"],
                     notes)
    return [*manifests, relay]


def _oauth_provider(p: Any, name: str, namespace: str | None, secret: dict[str, Any] | None,
                    tenant: str | None, client_id: str | None, notes: list[str]) -> Manifest:
    spec: dict[str, Any] = {"grantType": p.grant,
                            "clientId": client_id or "00000000-0000-0000-0000-000000000000"}
    comments: dict[tuple[str, ...], str] = {("spec", "clientId"): "your app registration's id"}
    cs = secret or default_ref(name, "client-secret")
    spec["clientSecretFrom"] = cs
    notes.append(f"put the client secret into {describe_ref(cs)}")
    if p.grant in ("RefreshToken", "AuthorizationCode"):
        rt = default_ref(name, "refresh-token")
        spec["refreshTokenFrom"] = rt
        comments[("spec", "refreshTokenFrom")] = "written by `smtpctl oauth login`"
    if p.authorization_endpoint:
        spec["authorizationEndpoint"] = p.authorization_endpoint
    url = str(p.token_endpoint)
    if tenant:
        url = url.replace("TENANT", tenant)
    spec["tokenEndpoint"] = url
    if "TENANT" in url:  # the note only while the URL still has the placeholder
        comments[("spec", "tokenEndpoint")] = "replace TENANT (or pass --tenant)"
        notes.append("replace TENANT in tokenEndpoint with your tenant id or domain "
                     "(or pass --tenant)")
    spec["scopes"] = list(p.scopes)
    doc = {"apiVersion": API_VERSION, "kind": "OAuth2Provider",
           "metadata": _meta(name, namespace), "spec": spec}
    return Manifest(doc, comments, [f"{p.title}: the OAuth 2.0 provider"])


# --- import: JavaMail / Spring properties ----------------------------------------------------


_SECRET_KEYS = ("password", "pass", "secret", "token", "credential")


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested YAML (Spring's application.yml) as dotted keys."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}[{i}]."))
    elif data is not None:
        out[prefix[:-1]] = data if isinstance(data, str) else json.dumps(data)
    return out


def read_properties(name: str, text: str) -> dict[str, str]:
    """``.properties`` (java.util.Properties syntax) or YAML (``application.yml``)."""
    if name.endswith((".yml", ".yaml")):
        import yaml

        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise ScaffoldError(f"{name}: not valid YAML ({getattr(exc, 'problem', exc)})"
                                ) from None
        out: dict[str, str] = {}
        for d in docs:
            out.update(flatten(d))
        return out
    import javaproperties

    try:
        props: dict[str, str] = javaproperties.loads(text)
    except ValueError as exc:
        raise ScaffoldError(f"{name}: not a properties file ({exc})") from None
    return props


_PLACEHOLDER = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_.]*)(?::[^}]*)?\}$")


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() == "true"


def import_properties(props: Mapping[str, str], *, source: str, name: str | None = None,
                      namespace: str | None = None, secret: dict[str, Any] | None = None
                      ) -> list[Manifest]:
    """One ExternalSmtp from JavaMail ``mail.smtp[s].*`` / Spring ``spring.mail.*`` keys."""
    mail: dict[str, str] = {}
    used: set[str] = set()
    spring = {k[len("spring.mail."):]: k for k in props if k.startswith("spring.mail.")}
    for k, v in props.items():
        short = None
        if k.startswith("spring.mail.properties."):
            short = k[len("spring.mail.properties."):]
        elif k.startswith(("mail.smtp.", "mail.smtps.", "mail.transport.", "mail.user",
                           "mail.password", "mail.from", "mail.host")):
            short = k
        if short is not None:
            mail[short.replace("mail.smtps.", "mail.smtp.")] = v
            used.add(k)
            if k.startswith("mail.smtps."):
                mail.setdefault("mail.transport.protocol", "smtps")

    def get(*keys: str) -> str | None:
        for key in keys:
            if key in spring:
                used.add(spring[key])
                return str(props[spring[key]])
            if key in mail:
                return str(mail[key])
        return None

    host = get("host", "mail.smtp.host", "mail.host")
    if not host:
        raise ScaffoldError(f"{source}: no SMTP host (mail.smtp.host or spring.mail.host)")
    for label, value in (("host", host), ("port", get("port", "mail.smtp.port")),
                         ("username", get("username", "mail.smtp.user", "mail.user"))):
        if value and _PLACEHOLDER.match(value):
            raise ScaffoldError(f"{source}: the {label} is a placeholder ({value}); a "
                                "manifest needs the value itself: resolve it first")
    protocol = (get("protocol", "mail.transport.protocol") or "smtp").lower()
    implicit = protocol == "smtps" or _truthy(get("mail.smtp.ssl.enable"))
    factory = get("mail.smtp.socketFactory.class")
    if factory and factory != SSL_FACTORY:
        raise ScaffoldError(f"{source}: mail.smtp.socketFactory.class {factory} is not "
                            f"supported (only {SSL_FACTORY}, implicit TLS)")
    implicit = implicit or factory == SSL_FACTORY
    port_text = get("port", "mail.smtp.port") or ("465" if implicit else "25")
    try:
        port = int(port_text)
    except ValueError:
        raise ScaffoldError(f"{source}: the port {port_text!r} is not a number") from None
    spec: dict[str, Any] = {"host": host, "port": port}
    comments: dict[tuple[str, ...], str] = {}
    notes: list[str] = []
    if implicit:
        sf_port = int(get("mail.smtp.socketFactory.port") or port)
        spec["socketFactory"] = {"class": SSL_FACTORY, "port": sf_port, "fallback": False}
        comments[("spec", "socketFactory")] = "implicit TLS (smtps / ssl.enable / socketFactory)"
        if _truthy(get("mail.smtp.socketFactory.fallback")):
            notes.append("mail.smtp.socketFactory.fallback=true was not carried over: a "
                         "fallback to plaintext is a downgrade (fallback: false)")
    starttls = _truthy(get("mail.smtp.starttls.enable")) or _truthy(
        get("mail.smtp.starttls.required"))
    if starttls and not implicit:
        spec["startTLS"] = True
    elif not implicit:
        notes.append("the properties enable no TLS at all: the connection test refuses to send "
                     "a password in clear; set startTLS: true if the server offers STARTTLS")
    user = get("username", "mail.smtp.user", "mail.user")
    password = get("password", "mail.smtp.password", "mail.password")
    mechanisms = (get("mail.smtp.auth.mechanisms") or "").upper()
    auth = _truthy(get("mail.smtp.auth")) or bool(user and password is not None)
    ref: dict[str, Any] | None = None
    if "XOAUTH2" in mechanisms:
        spec["authentication"] = "OAuth2"
        spec["username"] = user or "mailbox@example.com"
        spec["oauth2ProviderRef"] = {"name": f"{name or _name(host)}-idp"}
        notes.append("mail.smtp.auth.mechanisms=XOAUTH2: create the OAuth2Provider named in "
                     "oauth2ProviderRef (`smtpctl init microsoft365` or `gmail-oauth` shows one)")
    elif auth:
        spec["authentication"] = "UsernamePassword"
        spec["username"] = user or "user@example.com"
        match = _PLACEHOLDER.match(password or "")
        if secret is not None:
            ref = secret
        elif match:
            env = match.group(1).upper().replace(".", "_")
            ref = {"env": env}
            placeholder = "${" + match.group(1) + "}"
            comments[("spec", "passwordFrom")] = f"the properties' placeholder {placeholder}"
        else:
            ref = default_ref(name or _name(host), "password")
        spec["passwordFrom"] = ref
        if password is not None and not match:
            notes.append(f"the password in {source} was NOT copied: put it into "
                         f"{describe_ref(ref)} (and remove it from {source})")
        elif password is None:
            notes.append(f"put the password into {describe_ref(ref)}")
    else:
        spec["authentication"] = "None"
    sender = get("mail.smtp.from", "mail.from", "default-from")
    if sender:
        spec["from"] = sender
    elif not user or "@" not in user:
        spec["from"] = "sender@example.com"
        notes.append("set spec.from to the sender address your application uses")
    timeout_ms = [get(k) for k in ("mail.smtp.connectiontimeout", "mail.smtp.timeout",
                                   "mail.smtp.writetimeout")]
    try:
        millis = max(int(t) for t in timeout_ms if t)
    except ValueError:
        millis = 0
    if millis > 0:
        spec["connectionTest"] = {"timeoutSeconds": min(600, max(1, round(millis / 1000) * 2))}
        comments[("spec", "connectionTest", "timeoutSeconds")] = (
            "twice JavaMail's per-read timeout: the whole test's deadline")
    trust = get("mail.smtp.ssl.trust")
    if trust:
        notes.append(f"mail.smtp.ssl.trust={trust} was not carried over: certificates are "
                     "verified; for a private CA use spec.tls.caBundleFrom (never "
                     "tls.verify: false)")
    if get("mail.smtp.ssl.checkserveridentity") == "false":
        notes.append("mail.smtp.ssl.checkserveridentity=false was not carried over: the host "
                     "name is checked; set spec.tls.serverName if the certificate names "
                     "another host")
    known = {"host", "port", "protocol", "username", "password", "default-encoding",
             "test-connection", "default-from"}
    ignored = sorted(k for k in props if k not in used and not (
        k.startswith("spring.mail.") and k[len("spring.mail."):] in known))
    skipped_mail = sorted(k for k in mail if k not in _MAPPED and not k.startswith(
        ("mail.smtp.socketFactory.", "mail.transport.")))
    if skipped_mail:
        notes.append("not carried over (no equivalent): " + ", ".join(skipped_mail[:10]))
    doc = {"apiVersion": API_VERSION, "kind": "ExternalSmtp",
           "metadata": _meta(name or _name(host), namespace), "spec": spec}
    header = [f"imported from {source} by `smtpctl import`"]
    if ignored:
        header.append("other keys in the file were left alone: " + ", ".join(ignored[:8])
                      + (" ..." if len(ignored) > 8 else ""))
    return [Manifest(doc, comments, header, notes)]


_MAPPED = {
    "mail.smtp.host", "mail.host", "mail.smtp.port", "mail.smtp.auth", "mail.smtp.user",
    "mail.user", "mail.smtp.password", "mail.password", "mail.smtp.starttls.enable",
    "mail.smtp.starttls.required", "mail.smtp.ssl.enable", "mail.smtp.from", "mail.from",
    "mail.smtp.connectiontimeout", "mail.smtp.timeout", "mail.smtp.writetimeout",
    "mail.smtp.ssl.trust", "mail.smtp.ssl.checkserveridentity", "mail.smtp.auth.mechanisms",
}


def _name(host: str) -> str:
    """A resource name from a host: ``smtp.gmail.com`` -> ``smtp-gmail-com``."""
    name = re.sub(r"[^a-z0-9-]+", "-", host.lower()).strip("-")
    return name[:63].strip("-") or "imported"


def is_secret_key(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return any(s in last for s in _SECRET_KEYS)
