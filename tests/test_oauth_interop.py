"""OAuth 2.0 end to end against a real MTA: Postfix + Dovecot whose ``oauth2`` passdb asks
*our* token endpoint (RFC 7662 introspection) whether a token is live.

Unlike tests/test_oauth_e2e.py (aiosmtpd relay), nothing on the SMTP side was written
here: Postfix speaks SMTP and STARTTLS, Dovecot parses XOAUTH2/OAUTHBEARER and sends the
failure challenge.  The token oracle is reconciler.devservers.oauth.OAuthServer, so the
relay accepts only tokens that server issued and that are still live.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.credentials.oauth import TokenManager
from reconciler.credentials.resolve import resolve_smtp_credentials
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.probe.runner import run_probe
from reconciler.resources import ExternalSmtp
from tests.support import canary, peers, postfix
from tests.support.oauth_server import GMAIL_SCOPE, M365_SCOPE, canary_token, provider

pytestmark = pytest.mark.postfix

ENV = {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET, "SMTPCTL_TEST_RT": canary.REFRESH_TOKEN}


class _OurIntrospection:
    """Stands in for tests/support/introspection.py: Dovecot is pointed at our server."""

    def __init__(self, oauth: OAuthServer) -> None:
        self.oauth = oauth

    @property
    def url(self) -> str:
        return self.oauth.introspect_url

    def start(self) -> _OurIntrospection:
        return self

    def stop(self) -> None:
        """The OAuth server is stopped by its own fixture."""


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[OAuthServer, postfix.PostfixPeer]]:
    peers.fail_unless(postfix.skip_reason())  # a missing peer fails, never skips
    oauth = OAuthServer(
        [ClientConfig("m365-app", canary.CLIENT_SECRET, scopes=(M365_SCOPE,),
                      subject=postfix.USER),
         ClientConfig("gmail-app", canary.CLIENT_SECRET, scopes=(GMAIL_SCOPE,))],
        token_factory=canary_token, login_subject=postfix.USER,
    )
    oauth.add_refresh_token(canary.REFRESH_TOKEN, "gmail-app", scope=(GMAIL_SCOPE,))
    oauth.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(postfix, "IntrospectionServer", lambda: _OurIntrospection(oauth))
            peer = postfix.start_peer()
        try:
            yield oauth, peer
        finally:
            peer.stop()
    finally:
        oauth.stop()


def _resource(peer: postfix.PostfixPeer, listener: str, name: str) -> ExternalSmtp:
    return ExternalSmtp.model_validate({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": "relay"},
        "spec": {"host": peer.host, "port": peer.ports[listener], "startTLS": True,
                 "authentication": "OAuth2", "username": peer.user,
                 "oauth2ProviderRef": {"name": name},
                 "tls": {"caBundleFrom": {"file": str(peer.ca_file)}},
                 "connectionTest": {"timeoutSeconds": 15}},
    })


@pytest.mark.parametrize(("shape", "listener"), [("m365", "xoauth2_only"),
                                                 ("gmail", "xoauth2_only"),
                                                 ("gmail", "oauthbearer_only")])
async def test_real_mta_accepts_our_tokens_and_refreshes_expired_ones(
    world: tuple[OAuthServer, postfix.PostfixPeer], shape: str, listener: str
) -> None:
    oauth, peer = world
    kwargs: dict[str, Any] = {"name": shape}
    if shape == "gmail":
        kwargs["grant"] = "RefreshToken"
    prov = provider(oauth, **kwargs)
    sources = SourceRouter(env=EnvSource(ENV))
    tm = TokenManager(sources)
    resource = _resource(peer, listener, shape)
    creds = await resolve_smtp_credentials(resource, providers={shape: prov}, sources=sources,
                                           tokens=tm)
    verdict = await run_probe(resource.spec, creds.probe)
    assert verdict.passed, (verdict.reason, verdict.message)
    assert tm.requests == 1
    # The token dies at the provider; our cache still thinks it is good.  Dovecot asks the
    # provider, rejects it with the failure challenge, and the probe gets a fresh one.
    oauth.expire_access_tokens()
    verdict = await run_probe(resource.spec, creds.probe)
    assert verdict.passed, (verdict.reason, verdict.message)
    assert tm.requests == 2
    texts = [repr(verdict), verdict.message, *(t.line for t in verdict.transcript)]
    canary.assert_no_canary(*texts, where="verdict")
    canary.assert_no_canary(peer.logs(), where="Postfix/Dovecot logs")
