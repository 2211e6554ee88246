"""The one-time interactive login for AuthorizationCode providers (``smtpctl oauth login``).

The reconciler cannot click a consent screen, so a person runs this once: an OAuth 2.0
authorization-code flow (RFC 6749 section 4.1) with PKCE S256 (RFC 7636) and a loopback
redirect listener (RFC 8252 section 7.3, native apps):

1. listen on ``http://127.0.0.1:<ephemeral port>/callback`` (aiohttp);
2. build the authorization URL with authlib (``state`` and ``code_challenge``), print it
   and, unless told not to, open it in a browser;
3. wait (bounded) for the redirect; refuse a wrong ``state`` (CSRF) and report an
   ``error``/``error_description`` the provider sent;
4. exchange the code (with the ``code_verifier``) at the token endpoint;
5. write the refresh token to the provider's ``refreshTokenFrom`` (file: atomic, 0600;
   Kubernetes Secret: patch or create).  The caller decides whether it may be printed.

Google issues a refresh token only for ``access_type=offline`` (and again only with
``prompt=consent``); Microsoft only for the ``offline_access`` scope.  ``extra_params``
carries such provider-specific authorization parameters.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from reconciler.credentials.base import CredentialError, SecretSource
from reconciler.credentials.oauth import (
    OAuthError,
    TokenManager,
    require_secure_url,
    scrub,
    token_error,
)
from reconciler.credentials.policy import sources_for
from reconciler.resources import OAuth2Provider
from reconciler.secret import Secret

__all__ = ["LoginResult", "login"]

log = logging.getLogger(__name__)

_DONE_PAGE = (
    "<!doctype html><title>smtpctl</title><p>smtpctl: {text} You can close this window.</p>"
)


@dataclass(frozen=True)
class LoginResult:
    refresh_token: Secret
    persisted: bool
    message: str  # where the token went, or why it could not be written
    version: str | None = None


async def login(
    provider: OAuth2Provider,
    sources: SecretSource,
    tokens: TokenManager,
    *,
    announce: Callable[[str], None],
    open_browser: Callable[[str], Any] | None = None,
    timeout_seconds: float = 300,
    extra_params: Mapping[str, str] | None = None,
    persist: bool = True,
) -> LoginResult:
    """Run the login; raises CredentialError (``OAuth2LoginFailed`` and token reasons)."""
    spec = provider.spec
    name = provider.metadata.name
    if spec.authorization_endpoint is None:
        raise CredentialError(
            "InvalidSpec",
            f"OAuth2Provider {name!r} has no authorizationEndpoint; oauth login needs one",
        )
    if spec.refresh_token_from is None and persist:
        raise CredentialError(
            "InvalidSpec", f"OAuth2Provider {name!r} has no refreshTokenFrom to store the token in"
        )
    require_secure_url(spec.authorization_endpoint, "authorizationEndpoint")
    require_secure_url(spec.token_endpoint, "tokenEndpoint")
    ns = provider.metadata.namespace
    sources = sources_for(sources, provider)
    client_secret = (await sources.resolve(spec.client_secret_from, ns)
                     if spec.client_secret_from is not None else None)

    loop = asyncio.get_running_loop()
    result: asyncio.Future[dict[str, str]] = loop.create_future()
    listener = _Listener(result)
    port = await listener.start()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    try:
        from authlib.common.security import generate_token

        async with tokens.oauth_client(
            provider, client_secret.value if client_secret else None,
            redirect_uri=redirect_uri, code_challenge_method="S256",
        ) as client:
            verifier = generate_token(64)
            uri, state = client.create_authorization_url(
                spec.authorization_endpoint, code_verifier=verifier, **dict(extra_params or {})
            )
            listener.state = state
            announce(uri)
            if open_browser is not None:
                try:
                    open_browser(uri)
                except Exception as exc:  # noqa: BLE001 - a convenience; the URL is printed
                    log.debug("could not open a browser: %s", type(exc).__name__)
            try:  # not wait_for: on 3.11 it drops a Ctrl-C landing with the redirect
                async with asyncio.timeout(timeout_seconds):
                    params = await result
            except TimeoutError:
                stray = (f"; {listener.stray} request(s) with a wrong state were ignored "
                         "(not the redirect of this login: possible CSRF)"
                         if listener.stray else "")
                raise CredentialError(
                    "OAuth2LoginFailed",
                    f"no redirect arrived at {redirect_uri} within {timeout_seconds:g}s{stray}",
                ) from None
            if "error" in params:
                desc = scrub(params.get("error_description", ""), [])
                raise CredentialError(
                    "OAuth2LoginFailed",
                    f"the authorization endpoint answered {scrub(params['error'], [])[:64]}"
                    + (f": {desc}" if desc else ""),
                )
            sent = [client_secret.value] if client_secret else []
            try:
                async with asyncio.timeout(tokens.deadline_seconds):
                    token = await client.fetch_token(
                        spec.token_endpoint, grant_type="authorization_code",
                        code=params["code"], code_verifier=verifier, redirect_uri=redirect_uri,
                    )
            except TimeoutError:
                raise CredentialError(
                    "OAuth2TokenEndpointUnavailable",
                    f"token endpoint {spec.token_endpoint} did not complete the exchange "
                    f"within {tokens.deadline_seconds:g}s") from None
            except (OAuthError, httpx.HTTPError, ValueError, TypeError, OverflowError) as exc:
                err, _ = token_error(exc, spec.token_endpoint, sent, 0)
                raise err from None
    finally:
        await listener.stop()

    raw = token.get("refresh_token")
    if not isinstance(raw, str) or not raw:
        raise CredentialError(
            "OAuth2LoginFailed",
            "the token endpoint issued no refresh token: ask for offline access (Google: "
            "--auth-param access_type=offline --auth-param prompt=consent; Microsoft: add "
            "the offline_access scope)",
        )
    refresh = Secret(raw)
    if not persist or spec.refresh_token_from is None:
        return LoginResult(refresh, False, "not written (as requested)")
    where = spec.refresh_token_from.describe()
    writer = getattr(sources, "write", None)
    try:
        if writer is None:
            raise CredentialError("RefreshTokenNotPersisted", f"{where} is read-only")
        version: str = await writer(spec.refresh_token_from, ns, refresh)
    except CredentialError as exc:
        return LoginResult(refresh, False, f"could not write to {where}: {exc.message}")
    tokens.invalidate(provider)
    return LoginResult(refresh, True, f"written to {where}", version)


class _Listener:
    """The loopback redirect target: one GET /callback, answered with a small page."""

    def __init__(self, result: asyncio.Future[dict[str, str]]) -> None:
        self._result = result
        self.state: str | None = None
        self.stray = 0  # requests without the right state (ignored)
        self._runner: Any = None

    async def start(self) -> int:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/callback", self._callback)
        self._runner = web.AppRunner(app, access_log=None)  # the query holds the code
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _callback(self, request: Any) -> Any:
        from aiohttp import web

        query = {k: v for k, v in request.query.items()}
        if self._result.done():
            return web.Response(status=409, text="login already finished\n")
        if self.state is None or not hmac.compare_digest(
                str(query.get("state", "")).encode(), self.state.encode()):
            # Not our redirect: any local process can reach this port, so a request without
            # the right state neither completes nor aborts the login (it just goes away).
            self.stray += 1
            return _page(400, "This is not the redirect of the login in progress.")
        if "error" in query:
            self._result.set_result({"error": query["error"],
                                     "error_description": query.get("error_description", "")})
            return _page(400, "The login was not completed.")
        if not query.get("code"):
            self._result.set_result({"error": "invalid_request",
                                     "error_description": "the redirect carried no code"})
            return _page(400, "The login was not completed.")
        self._result.set_result({"code": query["code"]})
        return _page(200, "Login complete.")


def _page(status: int, text: str) -> Any:
    from aiohttp import web

    return web.Response(status=status, text=_DONE_PAGE.format(text=text),
                        content_type="text/html")
