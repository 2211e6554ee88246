"""The error catalog: every stable reason a status condition or a test verdict can carry.

Plain data, no I/O: every layer may import it.  ``docs/errors.md`` is generated from
this table (``python -m reconciler.catalog > docs/errors.md``) and a test fails when the
committed file drifts.

Fields of an entry:

* ``message`` - the familiar text (the original form's wording where it had one);
* ``action`` - what the user should do;
* ``retryable`` - whether trying again later, without any change, could help
  (transient: connection refused, 4xx replies, token endpoint down);
* ``stalled`` - whether only a change by the user can help (kstatus ``Stalled=True``);
* ``kind`` - ``error`` (the test or resolution failed), ``warning`` (passed, but the
  user should know) or ``info`` (a normal condition reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["error", "warning", "info"]


@dataclass(frozen=True, slots=True)
class Reason:
    name: str
    message: str
    action: str
    retryable: bool = False
    stalled: bool = False
    kind: Kind = "error"
    original: str | None = None  # the original form's message, where it had one


_ENTRIES: tuple[Reason, ...] = (
    # --- spec ---------------------------------------------------------------------------
    Reason("InvalidSpec", "The resource does not pass validation",
           "Run `smtpctl validate -f FILE` and fix the reported fields", stalled=True),
    # --- probe: name resolution and connection ------------------------------------------
    Reason("UnknownHost", "Unknown SMTP host",
           "Check the SMTP server name (spec.host): a name that does not exist needs a "
           "change; a resolver that did not answer is retried",
           retryable=True, stalled=False, original="Unknown SMTP host"),
    Reason("EgressDenied", "The reconciler refused to connect to this address",
           "Link-local, cloud metadata and deny-listed addresses are blocked by the "
           "reconciler's egress policy; use a routable relay address or ask the operator "
           "administrator to allow it", stalled=True),
    Reason("ConnectionRefused", "Could not connect to SMTP host",
           "Check the port (spec.port / spec.socketFactory.port); the server may be down, "
           "retry in a few minutes", retryable=True, original="Could not connect to SMTP host"),
    Reason("NetworkUnreachable", "No network route to the SMTP host",
           "The host's address cannot be reached from here at all (ENETUNREACH or "
           "EHOSTUNREACH): check spec.host, and this machine's network, VPN or firewall; the "
           "port is not the cause", retryable=True),
    Reason("ConnectTimeout", "Connect timed out",
           "Check the host and port and any firewall between; the server may be down, "
           "retry in a few minutes", retryable=True, original="Connect timed out"),
    Reason("ReadTimeout", "Read timed out",
           "Check SocketFactory Port, Class and Fallback: implicit TLS against a STARTTLS "
           "or plain port (or the reverse) waits for a reply that never comes",
           retryable=True, original="Read timed out"),
    Reason("DeadlineExceeded", "The connection test did not finish within its deadline",
           "Raise spec.connectionTest.timeoutSeconds or check why the server is slow",
           retryable=True),
    # --- probe: TLS ---------------------------------------------------------------------
    Reason("TLSHandshakeFailed", "Could not convert socket to TLS",
           "Check StartTLS and the SocketFactory fields, and spec.tls.minVersion: the "
           "server and the client found no common TLS version or cipher",
           retryable=False, stalled=True, original="Could not convert socket to TLS"),
    Reason("ImplicitTLSToPlainPort", "The server answered a TLS handshake in plaintext",
           "This port speaks plain SMTP (with STARTTLS): set spec.startTLS: true and remove "
           "spec.socketFactory, or point socketFactory.port at the implicit TLS port "
           "(usually 465)", stalled=True),
    Reason("CertificateInvalid", "The server's TLS certificate was rejected",
           "The message says why (expired, wrong host name, unknown CA). Fix the server's "
           "certificate, set spec.tls.serverName, or add its CA with spec.tls.caBundleFrom",
           stalled=True),
    Reason("StartTLSUnavailable", "Could not convert socket to TLS",
           "The server did not offer or refused STARTTLS although spec.startTLS is true; "
           "check StartTLS and the SocketFactory fields. Continuing in plaintext would be "
           "a downgrade, so the test fails", stalled=True,
           original="Could not convert socket to TLS"),
    Reason("StartTLSRequired", "The server requires STARTTLS before this command",
           "Set spec.startTLS: true (530 5.7.0 Must issue a STARTTLS command first)",
           stalled=True),
    # --- probe: server state --------------------------------------------------------------
    Reason("ServerUnavailable", "The SMTP server is not accepting connections now",
           "The server answered 421 or another 4xx; retry later", retryable=True),
    Reason("ProtocolError", "The SMTP server's reply could not be understood",
           "The server sent garbage, an oversize reply or closed the connection early; "
           "check that host and port point at an SMTP server", retryable=True),
    # --- probe: authentication ----------------------------------------------------------
    Reason("AuthenticationFailed", "Authentication failed: Bad username / password",
           "Check username and password (or the OAuth 2.0 provider configuration)",
           stalled=True, original="Authentication failed: Bad username / password"),
    Reason("OAuth2AuthenticationFailed", "Authentication failed",
           "The server rejected the OAuth 2.0 access token: check the OAuth 2.0 provider "
           "(scopes, client permissions) and that spec.username is the mailbox the token "
           "is for", stalled=True, original="Authentication failed"),
    Reason("AuthenticationRequired", "Authentication required",
           "The server demands AUTH but spec.authentication is None: configure "
           "UsernamePassword or OAuth2", stalled=True, original="Authentication required"),
    Reason("AuthNotSupported", "The server does not offer a usable AUTH mechanism",
           "The server advertises no AUTH mechanism we can use for this authentication "
           "type (PLAIN/LOGIN/CRAM-MD5 for passwords, XOAUTH2/OAUTHBEARER for OAuth 2.0); "
           "check the port (submission is usually 587 or 465) and spec.authentication",
           stalled=True),
    Reason("PlaintextAuthRefused", "Refused to send credentials over an unencrypted connection",
           "Enable spec.startTLS or implicit TLS (spec.socketFactory); set "
           "spec.allowPlaintextAuth: true only for a trusted network", stalled=True),
    Reason("ApplicationPasswordRequired", "Application-specific password required",
           "Gmail answered 534-5.7.9: create an app password for the account and "
           "reference it in spec.passwordFrom", stalled=True),
    Reason("SmtpAuthDisabled", "SMTP AUTH is disabled for this tenant or mailbox",
           "Microsoft 365 answered 535 5.7.139: enable Authenticated SMTP for the mailbox "
           "or tenant, or use OAuth 2.0", stalled=True),
    # --- probe: relay check -------------------------------------------------------------
    Reason("SenderRejected", "The server rejected the sender address",
           "The relay does not allow sending as spec.from (or spec.username): allow "
           "send-as for this address or turn the relay feature on", stalled=True),
    Reason("SendAsDenied", "The mailbox may not send as this address",
           "Microsoft 365 answered 550 5.7.60: grant Send As permission or change "
           "spec.from", stalled=True),
    Reason("RelayDenied", "The server refused to relay to the probe recipient",
           "Turn the relay feature on for this account, or set "
           "spec.connectionTest.probeRecipient to an address the relay accepts",
           stalled=True),
    # --- probe: warnings (the test passed) ----------------------------------------------
    Reason("InsecureFallbackUsed", "Implicit TLS failed; a plain connection was used instead",
           "socketFactory.fallback downgraded the connection; fix the implicit TLS port or "
           "set socketFactory.fallback: false", kind="warning"),
    Reason("TLSVerificationDisabled", "The server certificate was not verified",
           "spec.tls.verify is false; add the CA with spec.tls.caBundleFrom instead",
           kind="warning"),
    Reason("PlaintextAuthUsed", "Credentials were sent over an unencrypted connection",
           "spec.allowPlaintextAuth is true; enable TLS", kind="warning"),
    Reason("PipelinedAuthRefused",
           "The server objected to the pipelined AUTH; the test passed without it",
           "Set spec.connectionTest.pipelineAuth: false for this server (every test now "
           "costs a second connection)", kind="warning"),
    # --- credentials ----------------------------------------------------------------------
    Reason("SecretNotFound", "The referenced Secret does not exist",
           "Create the Secret named in the message in the resource's namespace",
           retryable=True),
    Reason("SecretKeyNotFound", "The referenced Secret has no such key",
           "Add the key to the Secret or fix secretKeyRef.key", retryable=True),
    Reason("SecretAccessDenied", "The reconciler may not read the referenced Secret",
           "Grant the reconciler's service account get/watch on that Secret (see "
           "docs/operator.md, RBAC)", stalled=True),
    Reason("SecretSourceUnavailable", "The secret source could not be reached",
           "The Kubernetes API (or the source) is unreachable; it is retried",
           retryable=True),
    Reason("EnvVarNotSet", "The referenced environment variable is not set",
           "Set the variable in the reconciler's environment or change passwordFrom.env",
           retryable=True),
    Reason("SecretFileNotFound", "The referenced secret file does not exist",
           "Mount or create the file, or change the file reference", retryable=True),
    Reason("SecretFileInsecure", "The referenced secret file is group- or world-writable",
           "chmod go-w the file (and its directory)", stalled=True),
    Reason("SecretValueInvalid", "The referenced secret value is empty or not UTF-8 text",
           "Put the value into the Secret key, variable or file named in the message",
           retryable=True),
    Reason("SecretReferenceNotAllowed",
           "The reconciler's source policy does not allow this secret reference",
           "A manifest may make the reconciler read only what its author could read: the "
           "operator reads Secrets of the resource's own namespace (a cluster administrator "
           "can allow variables and directories); the CLI reads files below the manifest's "
           "directory, and variables and namespaces you allow. The message names the option "
           "that allows the reference (see docs/security.md)", stalled=True),
    Reason("CABundleInvalid", "The CA bundle (spec.tls.caBundleFrom) cannot be loaded",
           "Reference a file or key holding PEM certificates "
           "(-----BEGIN CERTIFICATE-----); this is a configuration error, not the server's",
           stalled=True),
    Reason("KubernetesUnavailable", "secretKeyRef needs a Kubernetes API",
           "Run the operator, or pass a kubeconfig (--kubeconfig / KUBECONFIG); locally, "
           "use env or file references instead", stalled=True),
    # --- OAuth 2.0 ------------------------------------------------------------------------
    Reason("OAuth2ProviderNotFound", "The referenced OAuth 2.0 provider does not exist",
           "Create the OAuth2Provider named in spec.oauth2ProviderRef in the same namespace",
           retryable=True),
    Reason("OAuth2ProviderNotReady", "Waiting for the OAuth 2.0 provider to become Ready",
           "See the OAuth2Provider's own status for why it cannot obtain a token",
           retryable=True),
    Reason("OAuth2InvalidClient", "The token endpoint rejected the client credentials",
           "Check clientId, clientSecretFrom and tokenEndpointAuthMethod", stalled=True),
    Reason("OAuth2InvalidGrant", "The refresh token is expired or revoked",
           "Run `smtpctl oauth login PROVIDER -f FILE` to obtain a new refresh token",
           stalled=True),
    Reason("OAuth2InvalidScope", "The token endpoint rejected the requested scopes",
           "Check spec.scopes (Microsoft 365 app-only SMTP uses "
           "https://outlook.office365.com/.default)", stalled=True),
    Reason("OAuth2UnauthorizedClient", "The client may not use this grant type",
           "Enable the grant type for the client at the provider, or change grantType",
           stalled=True),
    Reason("OAuth2TokenEndpointUnavailable", "The token endpoint could not be reached",
           "The endpoint is down, timed out or answered 5xx; it is retried", retryable=True),
    Reason("OAuth2TokenEndpointError", "The token endpoint answered with an error",
           "The message carries the provider's error and error_description", stalled=True),
    Reason("OAuth2TestEndpointFailed", "The provider's test endpoint rejected the token",
           "Check spec.testEndpoint and the scopes the token carries", retryable=True),
    Reason("OAuth2LoginFailed", "The authorization-code login did not complete",
           "The message says why (consent denied, state mismatch, timeout, no refresh "
           "token issued); run `smtpctl oauth login PROVIDER -f FILE` again", stalled=True),
    Reason("RefreshTokenNotPersisted", "A rotated refresh token could not be written back",
           "The token endpoint rotated the refresh token but its source is read-only: the "
           "new token lives in this process's memory only and the next start will fail; "
           "make the source writable (a file the reconciler may write, or a Secret it may "
           "update), or run `smtpctl oauth login PROVIDER -f FILE` again", stalled=True),
    # --- engine / selection -----------------------------------------------------------
    Reason("TestPassed", "The connection test passed", "None", kind="info"),
    Reason("Testing", "A connection test is in progress", "Wait", kind="info"),
    Reason("Pending", "Not tested yet", "Wait", kind="info", retryable=True),
    Reason("TokenObtained", "An access token was obtained", "None", kind="info"),
    Reason("Active", "This relay is the one in use", "None", kind="info"),
    Reason("NotRequested", "spec.selected is false", "Set spec.selected: true to use this relay",
           kind="info"),
    Reason("NotReady", "Selection waits for the connection test to pass",
           "See the Ready condition", kind="info"),
    Reason("SelectionConflict", "Another selected relay with the same priority is in use",
           "Only one relay per namespace is used: give the standby a higher spec.priority "
           "(lower values are preferred), or set spec.selected: false", kind="info"),
    Reason("Standby", "Ready; another selected relay with a lower priority is in use",
           "None: this relay takes over when the one in use fails its test", kind="info"),
    Reason("FailbackPending", "Ready and preferred; takes selection back after failbackDelay",
           "None: the relay with the lower priority takes over again once it has been "
           "Ready for spec.failbackDelay (no flapping)", kind="info"),
    Reason("Failover", "The active relay failed its test; another Ready relay took over",
           "Fix the failed relay; see its Ready condition", kind="info"),
    Reason("Failback", "The preferred relay took selection back",
           "None: it had been Ready for its spec.failbackDelay", kind="info"),
    Reason("LastKnownGoodRetained", "The latest generation failed; an earlier one remains in use",
           "Fix the latest generation (see Ready); nothing changed for senders", kind="info"),
    Reason("ActiveRelayFailing", "The relay in use failed its re-verification",
           "The configuration applications use does not pass its test any more and no "
           "standby is Ready: fix the relay (see Ready), or add a standby (another "
           "selected relay with a higher spec.priority)", kind="error"),
    Reason("NoRelayInUse", "No relay is in use in this namespace any more",
           "Select a Ready relay (spec.selected: true)", kind="info"),
    Reason("PruneDeferred", "The relay in use was not pruned: nothing Ready would replace it",
           "Fix the replacement relay (see its Ready condition); the next apply --prune "
           "removes the old one once the replacement is Ready, or delete it explicitly "
           "with `smtpctl delete`", kind="info"),
    # --- configuration warnings (status.warnings) -----------------------------------------
    Reason("RefreshIntervalRaised", "refreshInterval is below the 1m floor; 1m is used",
           "Set spec.refreshInterval to 1m or more: every re-verification is a login",
           kind="warning"),
    Reason("FrequentLogins", "This provider throttles logins; re-verification is frequent",
           "Gmail and Microsoft 365 rate-limit or lock accounts that log in often: set "
           "spec.refreshInterval to 15m or more", kind="warning"),
    Reason("CertificateExpiringSoon", "The relay's TLS certificate expires soon",
           "Renew the relay's certificate; status.active.tls.certificateNotAfter says when "
           "it expires", kind="warning"),
)

CATALOG: dict[str, Reason] = {r.name: r for r in _ENTRIES}


def get(name: str) -> Reason:
    """The catalog entry for ``name``; unknown names are a programming error."""
    return CATALOG[name]


def render_markdown() -> str:
    """The error catalog as Markdown (``docs/errors.md``)."""
    lines = [
        "# Error catalog",
        "",
        "Generated from `reconciler/catalog.py` by `python -m reconciler.catalog`; do not edit.",
        "",
        "Every condition reason and test verdict reason is one of these stable CamelCase words.",
        "*Retry helps*: trying again later without a change may succeed (the reconciler retries "
        "with backoff). *Stalled*: only a change by the user can help (kstatus `Stalled=True`).",
        "",
        "| Reason | Kind | Message | Original form's message | Action | Retry helps | Stalled |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in _ENTRIES:
        lines.append(
            f"| `{r.name}` | {r.kind} | {r.message} | {r.original or ''} | {r.action} | "
            f"{'yes' if r.retryable else 'no'} | {'yes' if r.stalled else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
