"""``smtpctl dev``: keep loopback development servers running, with working manifests.

Starts, on 127.0.0.1 only, a real SMTP relay with STARTTLS (submission), a second one with
implicit TLS (both with certificates from their own certificate authority and AUTH
PLAIN/LOGIN/XOAUTH2/OAUTHBEARER), and a real OAuth 2.0 token endpoint (client
credentials).  It writes their CA, a password, a client secret and ready-to-use manifests
into ``--dir`` (default ``./smtpctl-dev``), prints what to run next, and keeps serving
until Ctrl-C (or SIGTERM).  Nothing else is touched: the servers are threads of this
process and stop with it.

The manifests reference their secrets with ``file:`` paths inside ``--dir``, so they pass
the CLI's default trust model (a manifest may read files below its own directory) with no
flag; the ports are chosen anew at every start, and the manifests are rewritten to match.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_OK, EXIT_USAGE, add_output

HELP = "run loopback dev servers (SMTP relays with a CA, a token endpoint) and write manifests"
USER = "dev@example.test"
OAUTH_USER = "oauth@example.test"
CLIENT_ID = "smtpctl-dev"
SCOPE = "smtp.send"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="smtpctl-dev", metavar="DIR",
                        help="where the CA, secrets and manifests are written (default "
                        "./smtpctl-dev; created, its files overwritten)")
    add_output(parser, ("text", "json", "yaml"))


def run(args: argparse.Namespace) -> int:
    import warnings

    from reconciler.devservers.oauth import ClientConfig, OAuthServer
    from reconciler.devservers.smtp import RelayServer

    root = Path(args.dir).resolve()
    try:
        (root / "secrets").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"smtpctl: cannot create {root}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    password = secrets.token_urlsafe(18)
    client_secret = secrets.token_urlsafe(18)
    oauth = OAuthServer(clients=[ClientConfig(CLIENT_ID, client_secret,
                                              grants=("client_credentials",),
                                              subject=OAUTH_USER)])
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT,
                                                                       signal.SIGTERM)}
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # aiosmtpd's own
    try:
        with oauth:
            users = {USER: password}
            starttls = RelayServer(mode="starttls", users=users)

            def token_ok(user: str, token: str) -> bool:
                info = oauth.token_info(token)
                return info is not None and info.live() and info.subject.lower() == user.lower()

            starttls.token_validator = token_ok
            with starttls:
                implicit = RelayServer(mode="implicit", users=users, ca=starttls.ca,
                                       token_validator=token_ok)
                with implicit:
                    files = _write(root, starttls, implicit, oauth, password, client_secret)
                    _announce(args, root, starttls, implicit, oauth, files)
                    while not stop.wait(3600):  # until Ctrl-C / SIGTERM
                        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if args.output == "text":
        print("dev servers stopped", file=sys.stderr)
    return EXIT_OK


def _secret_file(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def _write(root: Path, starttls: Any, implicit: Any, oauth: Any, password: str,
           client_secret: str) -> dict[str, Path]:
    sdir = root / "secrets"
    ca = sdir / "relay-ca.pem"
    ca.write_text(starttls.ca_pem)
    os.chmod(ca, 0o644)
    pw, cs = sdir / "smtp-password", sdir / "client-secret"
    _secret_file(pw, password)
    _secret_file(cs, client_secret)
    tls = f"  tls:\n    caBundleFrom: {{file: {ca}}}\n"
    files = {
        "relay.yaml": root / "relay.yaml",
        "relay-implicit-tls.yaml": root / "relay-implicit-tls.yaml",
        "oauth.yaml": root / "oauth.yaml",
    }
    head = ("# yaml-language-server: $schema=https://smtp.reconciler.dev/schemas/"
            "externalsmtp.v1alpha1.json\n# written by `smtpctl dev`: rewritten at every start "
            "(the ports change)\n")
    files["relay.yaml"].write_text(
        f"{head}apiVersion: smtp.reconciler.dev/v1alpha1\nkind: ExternalSmtp\n"
        "metadata:\n  name: dev-starttls\nspec:\n  host: 127.0.0.1\n"
        f"  port: {starttls.port}\n  startTLS: true          # submission: STARTTLS\n"
        f"  authentication: UsernamePassword\n  username: {USER}\n"
        f"  passwordFrom: {{file: {pw}}}\n  from: {USER}\n  selected: true\n{tls}")
    files["relay-implicit-tls.yaml"].write_text(
        f"{head}apiVersion: smtp.reconciler.dev/v1alpha1\nkind: ExternalSmtp\n"
        "metadata:\n  name: dev-implicit-tls\nspec:\n  host: 127.0.0.1\n"
        f"  port: {implicit.port}\n  socketFactory:         # implicit TLS (like port 465)\n"
        "    class: javax.net.ssl.SSLSocketFactory\n"
        f"    port: {implicit.port}\n    fallback: false\n"
        f"  authentication: UsernamePassword\n  username: {USER}\n"
        f"  passwordFrom: {{file: {pw}}}\n  from: {USER}\n{tls}")
    files["oauth.yaml"].write_text(
        f"{head}apiVersion: smtp.reconciler.dev/v1alpha1\nkind: OAuth2Provider\n"
        "metadata:\n  name: dev-idp\nspec:\n  grantType: ClientCredentials\n"
        f"  clientId: {CLIENT_ID}\n  clientSecretFrom: {{file: {cs}}}\n"
        f"  tokenEndpoint: {oauth.token_url}\n  scopes: [{SCOPE}]\n---\n"
        "apiVersion: smtp.reconciler.dev/v1alpha1\nkind: ExternalSmtp\n"
        "metadata:\n  name: dev-oauth\nspec:\n  host: 127.0.0.1\n"
        f"  port: {starttls.port}\n  startTLS: true\n  authentication: OAuth2\n"
        f"  username: {OAUTH_USER}\n  oauth2ProviderRef: {{name: dev-idp}}\n"
        f"  from: {OAUTH_USER}\n{tls}")
    return files


def _announce(args: argparse.Namespace, root: Path, starttls: Any, implicit: Any, oauth: Any,
              files: dict[str, Path]) -> None:
    if args.output in ("json", "yaml"):
        from reconciler.cli.output import Result

        result = Result("dev")
        result.summary = {"dir": str(root), "starttlsPort": starttls.port,
                          "implicitTlsPort": implicit.port, "tokenUrl": oauth.token_url}
        import yaml

        for path in files.values():
            for doc in yaml.safe_load_all(path.read_text()):
                meta = doc["metadata"]
                result.item(doc["kind"], "default", meta["name"], file=str(path),
                            manifest=doc)
        result.emit(args.output, EXIT_OK)
        return
    rel = os.path.relpath(root)
    shown = rel if not rel.startswith("..") else str(root)
    print(f"""smtpctl dev: loopback servers are running (Ctrl-C to stop)

  SMTP relay, STARTTLS      127.0.0.1:{starttls.port}   (AUTH PLAIN/LOGIN/XOAUTH2/OAUTHBEARER)
  SMTP relay, implicit TLS  127.0.0.1:{implicit.port}
  OAuth 2.0 token endpoint  {oauth.token_url}   (client credentials)
  certificate authority     {root / "secrets" / "relay-ca.pem"}

Manifests (secrets by file: reference, below {shown}/):
  {shown}/relay.yaml              password relay, STARTTLS, selected
  {shown}/relay-implicit-tls.yaml password relay, implicit TLS (socketFactory)
  {shown}/oauth.yaml              OAuth2Provider + OAuth 2.0 relay

Try, from another shell:
  smtpctl validate -f {shown}
  smtpctl test -f {shown}
  smtpctl apply -f {shown}
  smtpctl get ; smtpctl get active -o env
  smtpctl test -f my-relay.yaml      # your own manifest against these servers
""", flush=True)
