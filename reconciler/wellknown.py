"""Well-known SMTP providers: their hosts, ports, TLS modes and authentication.

Plain data, no I/O: every layer may import it.  Used by ``smtpctl init`` (scaffolding a
manifest per provider), by the probe (a host name that does not exist is compared with
these to suggest the one that was probably meant) and by ``smtpctl import``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Provider:
    key: str  # the name `smtpctl init` takes
    title: str
    host: str
    port: int
    tls: str  # "starttls" | "implicit"
    authentication: str  # "UsernamePassword" | "OAuth2"
    username_hint: str
    notes: tuple[str, ...] = ()  # may name {provider} and {namespace} (` -n NS` or empty)
    token_endpoint: str | None = None
    scopes: tuple[str, ...] = ()
    grant: str | None = None  # OAuth2: ClientCredentials | RefreshToken | AuthorizationCode
    authorization_endpoint: str | None = None
    other_hosts: tuple[str, ...] = field(default=())


PROVIDERS: tuple[Provider, ...] = (
    Provider("gmail", "Google Workspace / Gmail (app password)", "smtp.gmail.com", 587,
             "starttls", "UsernamePassword", "you@example.com",
             ("Gmail refuses the account password when 2-step verification is on (534 "
              "5.7.9): create an app password at https://myaccount.google.com/apppasswords",
              "spec.from must be the account or one of its verified send-as aliases")),
    Provider("gmail-oauth", "Google Workspace / Gmail (OAuth 2.0)", "smtp.gmail.com", 587,
             "starttls", "OAuth2", "you@example.com",
             ("run `smtpctl oauth login {provider} -f FILE{namespace} "
              "--auth-param access_type=offline --auth-param prompt=consent` once to store "
              "the refresh token",),
             token_endpoint="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL
             scopes=("https://mail.google.com/",), grant="AuthorizationCode",
             authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth"),
    Provider("microsoft365", "Microsoft 365 / Exchange Online (OAuth 2.0 client credentials)",
             "smtp.office365.com", 587, "starttls", "OAuth2", "mailbox@contoso.com",
             ("register an app in Entra ID with the application permission SMTP.SendAsApp, "
              "grant admin consent and register its service principal in Exchange Online "
              "(New-ServicePrincipal, Add-MailboxPermission)",
              "SMTP AUTH must be enabled for the mailbox (else 535 5.7.139)"),
             token_endpoint="https://login.microsoftonline.com/TENANT/oauth2/v2.0/token",  # noqa: S106
             scopes=("https://outlook.office365.com/.default",), grant="ClientCredentials",
             other_hosts=("smtp-mail.outlook.com",)),
    Provider("ses", "Amazon SES (SMTP credentials, implicit TLS)",
             "email-smtp.us-east-1.amazonaws.com", 465, "implicit", "UsernamePassword",
             "AKIAXXXXXXXXXXXXXXXX",
             ("the username and password are SES SMTP credentials (created in the SES "
              "console), not the IAM access key and secret",
              "change the region in spec.host (email-smtp.REGION.amazonaws.com)",
              "spec.from must be a verified identity; in the SES sandbox the probe "
              "recipient must be verified too"),
             other_hosts=tuple(f"email-smtp.{r}.amazonaws.com" for r in (
                 "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2",
                 "eu-central-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1",
                 "ca-central-1", "sa-east-1"))),
    Provider("sendgrid", "SendGrid (API key)", "smtp.sendgrid.net", 587, "starttls",
             "UsernamePassword", "apikey",
             ("the username is literally `apikey`; the password is an API key with the "
              "Mail Send permission",
              "spec.from must be a verified sender or on an authenticated domain "
              "(`apikey` is not an address)"),
             other_hosts=()),
    Provider("mailgun", "Mailgun (SMTP credentials)", "smtp.mailgun.org", 587, "starttls",
             "UsernamePassword", "postmaster@mg.example.com",
             ("the username is an SMTP login of your sending domain "
              "(Sending > Domain settings > SMTP credentials)",
              "EU domains use smtp.eu.mailgun.org"),
             other_hosts=("smtp.eu.mailgun.org",)),
    Provider("postmark", "Postmark (server API token)", "smtp.postmarkapp.com", 587,
             "starttls", "UsernamePassword", "SERVER-API-TOKEN",
             ("username and password are both the Server API token",
              "spec.from must be a confirmed sender signature or on a verified domain"),
             other_hosts=("smtp-broadcasts.postmarkapp.com",)),
    Provider("internal", "An internal relay (Postfix, Exchange connector, smarthost)",
             "smtp.internal.example.com", 587, "starttls", "UsernamePassword",
             "app@example.com",
             ("a relay that needs no login: set authentication: None and remove "
              "username/passwordFrom",
              "a private CA: add it with spec.tls.caBundleFrom (never tls.verify: false)")),
)

BY_KEY = {p.key: p for p in PROVIDERS}
HOSTS = tuple(dict.fromkeys(h for p in PROVIDERS if p.key != "internal"
                            for h in (p.host, *p.other_hosts)))
"""Every public host name above (for suggestions)."""


def suggest_host(host: str) -> str | None:
    """The well-known host ``host`` is probably a misspelling of, if any."""
    if host in HOSTS:
        return None
    match = difflib.get_close_matches(host.lower(), HOSTS, n=1, cutoff=0.85)
    return match[0] if match else None
