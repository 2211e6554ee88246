"""`smtpctl test` end to end against real Postfix + Dovecot: a process, a manifest, env vars.

The whole chain with nothing of it mocked: the CLI reads a manifest, resolves the
password and the OAuth client secret from the environment, fetches an access token from
the devservers' OAuth 2.0 server (client credentials), and probes Postfix, whose Dovecot
validates that token by introspecting it - over HTTP - at the same OAuth server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.secret import Secret
from tests.support import canary
from tests.support.canary import assert_no_canary
from tests.support.postfix import PostfixPeer, assert_secret_absent, postfix_peer

__all__ = ["postfix_peer"]  # the session fixture, imported for pytest
pytestmark = pytest.mark.postfix

ROOT = Path(__file__).resolve().parent.parent
API = "smtp.reconciler.dev/v1alpha1"


@pytest.fixture
def oauth(postfix_peer: PostfixPeer) -> Iterator[OAuthServer]:
    """A token endpoint whose tokens Dovecot accepts (via the introspection delegate)."""
    server = OAuthServer(
        clients=[ClientConfig("smtp-app", secret=canary.CLIENT_SECRET,
                              subject=postfix_peer.user)],
        token_factory=lambda prefix: canary.ACCESS_TOKEN_PREFIX + canary.canary("cli"))

    def delegate(token: Secret) -> dict[str, Any]:
        return server.handle_introspect({"token": token.reveal()})

    with server:
        postfix_peer.introspection.delegates.append(delegate)
        try:
            yield server
        finally:
            postfix_peer.introspection.delegates.remove(delegate)


def _relay(name: str, peer: PostfixPeer, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": peer.host, "port": peer.starttls_port, "authentication": "UsernamePassword",
        "startTLS": True, "username": peer.user,
        "passwordFrom": {"env": "INTEROP_SMTP_PASSWORD"},
        "tls": {"caBundleFrom": {"file": str(peer.ca_file)}},
        "connectionTest": {"timeoutSeconds": 10},
    }
    base.update(spec)
    return {"apiVersion": API, "kind": "ExternalSmtp", "metadata": {"name": name},
            "spec": {k: v for k, v in base.items() if v is not None}}


def test_smtpctl_test_against_postfix(postfix_peer: PostfixPeer, oauth: OAuthServer,
                                      tmp_path: Path) -> None:
    peer = postfix_peer
    docs = [
        {"apiVersion": API, "kind": "OAuth2Provider", "metadata": {"name": "interop-idp"},
         "spec": {"grantType": "ClientCredentials", "clientId": "smtp-app",
                  "clientSecretFrom": {"env": "INTEROP_CLIENT_SECRET"},
                  "tokenEndpoint": oauth.token_url}},
        _relay("postfix-submission", peer),
        _relay("postfix-smtps", peer, startTLS=False, socketFactory={
            "class": "javax.net.ssl.SSLSocketFactory", "port": peer.implicit_port,
            "fallback": False}),
        _relay("postfix-oauth", peer, port=peer.ports["oauthbearer_only"],
               authentication="OAuth2", passwordFrom=None,
               oauth2ProviderRef={"name": "interop-idp"}),
        _relay("postfix-downgrade", peer, port=peer.plain_port),
    ]
    introspections_before = peer.introspection.requests
    manifest = tmp_path / "relays.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_SMTP_PASSWORD=canary.PASSWORD, INTEROP_CLIENT_SECRET=canary.CLIENT_SECRET,
               PYTHONPATH=str(ROOT),
               # smtpctl's trust opt-ins (docs/security.md): the variables and the peer's CA
               SMTPCTL_ALLOW_ENV="INTEROP_*", SMTPCTL_ALLOW_FILE_ROOT=str(peer.ca_file.parent))
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "test", "-f", str(manifest), "-o", "json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
        stdin=subprocess.DEVNULL)
    assert_no_canary(done.stdout, done.stderr, where="smtpctl test output")
    assert_secret_absent(done.stdout + done.stderr, canary.PASSWORD, "smtpctl test output")
    assert done.returncode == 1, done.stderr[-2000:]  # one relay fails: the downgrade
    results = {r["name"]: r for r in json.loads(done.stdout)["items"]}
    assert set(results) == {"postfix-submission", "postfix-smtps", "postfix-oauth",
                            "postfix-downgrade"}
    for name in ("postfix-submission", "postfix-smtps", "postfix-oauth"):
        assert results[name]["passed"], (name, results[name]["message"])
    down = results["postfix-downgrade"]
    assert (down["passed"], down["stage"], down["reason"]) == (
        False, "starttls", "StartTLSUnavailable")
    assert not any(t["direction"] == "c" and t["line"].startswith("AUTH")
                   for t in down["transcript"])
    oauth_auth = [t["line"] for t in results["postfix-oauth"]["transcript"]
                  if t["direction"] == "c" and t["line"].startswith("AUTH")]
    assert oauth_auth == ["AUTH OAUTHBEARER ******"]
    # Dovecot really asked (over HTTP) about the token the OAuth server issued.
    assert peer.introspection.requests > introspections_before
    assert any(path == "/token" for path, _ in oauth.requests)
