"""Fixtures around the loopback OAuth 2.0 server (reconciler.devservers.oauth).

Every secret the server knows or issues is a canary: the client secret is
``canary.CLIENT_SECRET``, the pre-registered refresh token ``canary.REFRESH_TOKEN``, issued
access tokens start with ``canary.ACCESS_TOKEN_PREFIX`` and rotated refresh tokens are fresh
registered canaries, so the leak guard finds any of them in any output.

Use ``oauth_server`` (a started server with an M365-shaped confidential client ``m365-app``,
a Gmail-shaped client ``gmail-app`` with a refresh token, and a public client ``cli-app``)
and the ``provider(...)`` helper to build OAuth2Provider resources pointing at it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.resources import OAuth2Provider
from tests.support import canary

M365_SCOPE = "https://outlook.office365.com/.default"
GMAIL_SCOPE = "https://mail.google.com/"
MAILBOX = "relay@example.test"


def canary_token(prefix: str) -> str:
    """Token factory: access tokens carry the access-token canary prefix, others are canaries."""
    if prefix == "at-":
        return canary.ACCESS_TOKEN_PREFIX + secrets.token_hex(8)
    return canary.canary("rt")


def make_server(**kwargs: Any) -> OAuthServer:
    clients = [
        ClientConfig("m365-app", canary.CLIENT_SECRET, scopes=(M365_SCOPE,),
                     default_scopes=(M365_SCOPE,), subject=MAILBOX),
        ClientConfig("gmail-app", canary.CLIENT_SECRET, scopes=(GMAIL_SCOPE,)),
        ClientConfig("cli-app", None, grants=("authorization_code", "refresh_token"),
                     scopes=(GMAIL_SCOPE, "offline_access")),
    ]
    kwargs.setdefault("token_factory", canary_token)
    kwargs.setdefault("login_subject", MAILBOX)
    server = OAuthServer(clients, **kwargs)
    server.add_refresh_token(canary.REFRESH_TOKEN, "gmail-app", subject=MAILBOX,
                             scope=(GMAIL_SCOPE,))
    return server


@pytest.fixture
def oauth_server() -> Iterator[OAuthServer]:
    with make_server() as server:
        yield server


def provider(
    server: OAuthServer,
    *,
    name: str = "oauth",
    namespace: str = "default",
    grant: str = "ClientCredentials",
    client_id: str | None = None,
    client_secret_from: dict[str, Any] | None = None,
    refresh_token_from: dict[str, Any] | None = None,
    scopes: list[str] | None = None,
    **spec: Any,
) -> OAuth2Provider:
    """An OAuth2Provider resource pointing at ``server`` (M365 or Gmail shaped by ``grant``)."""
    body: dict[str, Any] = {
        "grantType": grant,
        "tokenEndpoint": server.token_url,
    }
    if grant == "ClientCredentials":
        body["clientId"] = client_id or "m365-app"
        body["clientSecretFrom"] = client_secret_from or {"env": "SMTPCTL_TEST_CS"}
        body["scopes"] = scopes if scopes is not None else [M365_SCOPE]
    else:
        body["clientId"] = client_id or "gmail-app"
        if client_secret_from is not None or client_id is None:
            body["clientSecretFrom"] = client_secret_from or {"env": "SMTPCTL_TEST_CS"}
        body["refreshTokenFrom"] = refresh_token_from or {"env": "SMTPCTL_TEST_RT"}
        body["scopes"] = scopes if scopes is not None else [GMAIL_SCOPE]
        if grant == "AuthorizationCode":
            body.setdefault("authorizationEndpoint", server.authorize_url)
    body.update(spec)
    return OAuth2Provider.model_validate({
        "apiVersion": "smtp.reconciler.dev/v1alpha1",
        "kind": "OAuth2Provider",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    })
