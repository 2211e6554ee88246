"""The authorization-code login (PKCE, loopback redirect), driven end to end over HTTP."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from reconciler.credentials.base import CredentialError
from reconciler.credentials.login import login
from reconciler.credentials.oauth import TokenManager
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.devservers.oauth import OAuthServer
from tests.support import canary
from tests.support.oauth_server import GMAIL_SCOPE, MAILBOX, provider
from tests.support.oauth_server import oauth_server as oauth_server

ENV = {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET}


class Browser:
    """Plays the user's browser: follows the authorization URL and its redirect."""

    def __init__(self, *, tamper_state: bool = False, follow: bool = True) -> None:
        self.urls: list[str] = []
        self.responses: list[httpx.Response] = []
        self.tamper_state = tamper_state
        self.follow = follow
        self.tasks: list[asyncio.Task[None]] = []

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        if self.follow:
            self.tasks.append(asyncio.get_running_loop().create_task(self._go(url)))
        return True

    async def _go(self, url: str) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(url)  # the authorization endpoint: 302 to our listener
            assert r.status_code == 302, r.status_code
            location = r.headers["location"]
            if self.tamper_state:
                location = location.replace("state=", "state=evil")
            self.responses.append(await http.get(location))


def rt_file(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "refresh_token"


def login_provider(server: OAuthServer, tmp_path: Path, **kw: Any) -> Any:
    kw.setdefault("client_id", "cli-app")
    kw.setdefault("refresh_token_from", {"file": str(rt_file(tmp_path))})
    kw.setdefault("scopes", [GMAIL_SCOPE, "offline_access"])
    return provider(server, grant="AuthorizationCode", **kw)


async def run_login(p: Any, browser: Browser, **kw: Any) -> Any:
    sources = SourceRouter(env=EnvSource(ENV))
    tm = TokenManager(sources)
    announced: list[str] = []
    kw.setdefault("timeout_seconds", 10)
    try:
        return await login(p, sources, tm, announce=announced.append, open_browser=browser, **kw)
    finally:
        assert announced == browser.urls
        for t in browser.tasks:
            await t


async def test_login_public_client_pkce_writes_refresh_token(
    oauth_server: OAuthServer, tmp_path: Path
) -> None:
    p = login_provider(oauth_server, tmp_path)
    browser = Browser()
    result = await run_login(p, browser)
    assert result.persisted and "written to file" in result.message
    stored = rt_file(tmp_path).read_text().strip()
    assert stored == result.refresh_token.reveal()
    assert stored in oauth_server.refresh_tokens()
    assert stat.S_IMODE(os.stat(rt_file(tmp_path)).st_mode) == 0o600
    # The URL carries PKCE S256 and a state, never a secret.
    q = parse_qs(urlsplit(browser.urls[0]).query)
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"][0]
    assert q["state"][0] and q["redirect_uri"][0].startswith("http://127.0.0.1:")
    assert browser.responses[0].status_code == 200
    canary.assert_no_canary(browser.urls[0], repr(result))
    # The reconciler can now use the stored refresh token.
    rt = provider(oauth_server, grant="AuthorizationCode", client_id="cli-app",
                  refresh_token_from={"file": str(rt_file(tmp_path))},
                  scopes=[GMAIL_SCOPE])
    token = await TokenManager(SourceRouter(env=EnvSource(ENV))).token(rt)
    info = oauth_server.token_info(token.reveal())
    assert info is not None and info.subject == MAILBOX


async def test_login_confidential_client_with_extra_params(
    oauth_server: OAuthServer, tmp_path: Path
) -> None:
    p = login_provider(oauth_server, tmp_path, client_id="gmail-app",
                       client_secret_from={"env": "SMTPCTL_TEST_CS"}, scopes=[GMAIL_SCOPE])
    browser = Browser()
    result = await run_login(p, browser, extra_params={"access_type": "offline",
                                                       "prompt": "consent"})
    assert result.persisted
    q = parse_qs(urlsplit(browser.urls[0]).query)
    assert q["access_type"] == ["offline"] and q["prompt"] == ["consent"]


async def test_login_state_mismatch_is_refused(oauth_server: OAuthServer, tmp_path: Path) -> None:
    p = login_provider(oauth_server, tmp_path)
    browser = Browser(tamper_state=True)
    with pytest.raises(CredentialError) as exc:
        await run_login(p, browser, timeout_seconds=5)  # the stray arrives long before
    assert exc.value.reason == "OAuth2LoginFailed" and "wrong state" in exc.value.message
    assert browser.responses[0].status_code == 400
    assert not rt_file(tmp_path).exists()
    assert ("/token", "authorization_code") not in oauth_server.requests


async def test_login_denied_by_user(oauth_server: OAuthServer, tmp_path: Path) -> None:
    oauth_server.deny_next()
    p = login_provider(oauth_server, tmp_path)
    with pytest.raises(CredentialError) as exc:
        await run_login(p, Browser())
    assert exc.value.reason == "OAuth2LoginFailed"
    assert "access_denied" in exc.value.message and "the user said no" in exc.value.message


async def test_login_times_out(oauth_server: OAuthServer, tmp_path: Path) -> None:
    p = login_provider(oauth_server, tmp_path)
    with pytest.raises(CredentialError) as exc:
        await run_login(p, Browser(follow=False), timeout_seconds=0.3)
    assert exc.value.reason == "OAuth2LoginFailed" and "no redirect" in exc.value.message


async def test_login_invalid_scope(oauth_server: OAuthServer, tmp_path: Path) -> None:
    p = login_provider(oauth_server, tmp_path, scopes=["admin"])
    with pytest.raises(CredentialError) as exc:
        await run_login(p, Browser())
    assert exc.value.reason == "OAuth2LoginFailed" and "invalid_scope" in exc.value.message


async def test_login_bad_client_secret(oauth_server: OAuthServer, tmp_path: Path) -> None:
    p = login_provider(oauth_server, tmp_path, client_id="gmail-app",
                       client_secret_from={"env": "WRONG_CS"}, scopes=[GMAIL_SCOPE])
    sources = SourceRouter(env=EnvSource({"WRONG_CS": "nope-" + canary.CLIENT_SECRET}))
    browser = Browser()
    with pytest.raises(CredentialError) as exc:
        await login(p, sources, TokenManager(sources), announce=lambda u: None,
                    open_browser=browser, timeout_seconds=10)
    for t in browser.tasks:
        await t
    assert exc.value.reason == "OAuth2InvalidClient"


async def test_login_unwritable_target_reports_not_persisted(
    oauth_server: OAuthServer, tmp_path: Path
) -> None:
    target = tmp_path / "dir"
    (target / "x").mkdir(parents=True)  # a non-empty directory cannot be replaced by a file
    p = login_provider(oauth_server, tmp_path, refresh_token_from={"file": str(target)})
    result = await run_login(p, Browser())
    assert not result.persisted and "could not write" in result.message
    canary.assert_no_canary(result.message)


async def test_login_without_authorization_endpoint(oauth_server: OAuthServer,
                                                    tmp_path: Path) -> None:
    p = provider(oauth_server, grant="RefreshToken")
    with pytest.raises(CredentialError) as exc:
        await run_login(p, Browser(follow=False))
    assert exc.value.reason == "InvalidSpec" and "authorizationEndpoint" in exc.value.message


async def test_pkce_verifier_is_checked_by_the_server(oauth_server: OAuthServer) -> None:
    """The devserver refuses a code exchanged without the right verifier (RFC 7636 4.6)."""
    async with httpx.AsyncClient() as http:
        r = await http.get(oauth_server.authorize_url, params={
            "response_type": "code", "client_id": "cli-app", "state": "s",
            "redirect_uri": "http://127.0.0.1:9/cb", "code_challenge": "abc",
            "code_challenge_method": "S256", "scope": GMAIL_SCOPE})
        assert r.status_code == 302
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        r = await http.post(oauth_server.token_url, data={
            "grant_type": "authorization_code", "code": code, "client_id": "cli-app",
            "redirect_uri": "http://127.0.0.1:9/cb", "code_verifier": "wrong"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        # Non-loopback redirect URIs are refused without a redirect.
        r = await http.get(oauth_server.authorize_url, params={
            "response_type": "code", "client_id": "cli-app",
            "redirect_uri": "http://evil.example/cb", "code_challenge": "abc",
            "code_challenge_method": "S256"})
        assert r.status_code == 400 and "location" not in r.headers
