"""An OAuth 2.0 identity provider and a relay that accepts only its live tokens, for the
operator's end-to-end tests (one setup instead of a copy in every test file).

* ``idp``: the dev OAuth server (:mod:`reconciler.devservers.oauth`) with one client
  (``smtpctl``, secret :data:`tests.support.canary.CLIENT_SECRET`) whose tokens carry the
  subject :data:`OAUTH_USER`.  Grants: client credentials, or a refresh token
  (:data:`tests.support.canary.REFRESH_TOKEN`), optionally rotated on every grant.
  Access tokens carry the canary prefix, so the canary sweeps see them.
* ``relay``: a real aiosmtpd relay (STARTTLS + AUTH, trustme CA) whose XOAUTH2/OAUTHBEARER
  validator accepts a token only when the idp issued it, it is live and its subject is the
  user logging in.  It also accepts :data:`PASSWORD_USER` with the canary password.
* :meth:`OAuthRelay.install` puts the relay's CA and the provider's Secret into a
  :class:`~tests.support.kube_operator.Cluster` and creates the ``OAuth2Provider``;
  :meth:`OAuthRelay.relay_spec` is an ExternalSmtp spec that authenticates with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.kube_operator import GROUP, VERSION, Cluster, relay_spec

OAUTH_USER = "oauth@example.test"
PASSWORD_USER = "user@example.test"
CLIENT_ID = "smtpctl"


@dataclass
class OAuthRelay:
    idp: OAuthServer
    relay: RelayServer
    grant: str  # "ClientCredentials" | "RefreshToken"

    def token_ok(self, user: str, token: str) -> bool:
        info = self.idp.token_info(token)
        return info is not None and info.subject.lower() == user.lower()

    def provider_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "grantType": self.grant, "clientId": CLIENT_ID,
            "clientSecretFrom": {"secretKeyRef": {"name": "idp", "key": "client-secret"}},
            "tokenEndpoint": self.idp.token_url}
        if self.grant == "RefreshToken":
            spec["refreshTokenFrom"] = {"secretKeyRef": {"name": "idp", "key": "refresh-token"}}
        return spec

    def install(self, c: Cluster, ns: str, provider: str = "idp") -> None:
        """The relay's CA (Secret ``relay-ca``), the provider's Secret ``idp`` and the
        ``OAuth2Provider`` named ``provider`` in ``ns``."""
        c.put_secret(ns, "relay-ca", {"ca.crt": self.relay.ca_pem})
        data = {"client-secret": canary.CLIENT_SECRET}
        if self.grant == "RefreshToken":
            data["refresh-token"] = canary.REFRESH_TOKEN
        c.put_secret(ns, "idp", data)
        c.co.create_namespaced_custom_object(GROUP, VERSION, ns, "oauth2providers", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "OAuth2Provider",
            "metadata": {"name": provider}, "spec": self.provider_spec()})

    def relay_spec(self, provider: str = "idp", **kw: Any) -> dict[str, Any]:
        """An ExternalSmtp spec for the relay, authenticating with ``provider``'s tokens."""
        spec = relay_spec(self.relay.port, user=OAUTH_USER, **kw)
        del spec["passwordFrom"]
        spec.update(authentication="OAuth2", oauth2ProviderRef={"name": provider})
        return spec


@contextmanager
def oauth_relay(*, grant: str = "ClientCredentials", rotate: bool = False,
                token_lifetime: float | None = None) -> Iterator[OAuthRelay]:
    """The idp and the relay, running (see the module docstring)."""
    grants = ("client_credentials",) if grant == "ClientCredentials" else ("refresh_token",)
    idp = OAuthServer(
        clients=[ClientConfig(CLIENT_ID, canary.CLIENT_SECRET, grants=grants,
                              subject=OAUTH_USER)],
        rotate_refresh_tokens=rotate,
        token_factory=lambda prefix: canary.ACCESS_TOKEN_PREFIX + os.urandom(6).hex())
    if token_lifetime is not None:
        idp.token_lifetime = token_lifetime
    if grant == "RefreshToken":
        idp.add_refresh_token(canary.REFRESH_TOKEN, CLIENT_ID, subject=OAUTH_USER)
    relay = RelayServer(mode="starttls", users={PASSWORD_USER: canary.PASSWORD})
    env = OAuthRelay(idp, relay, grant)
    relay.token_validator = env.token_ok
    with idp, relay:
        yield env
