"""TokenManager against the real loopback token endpoint: grants, errors, cache, retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler import catalog
from reconciler.credentials.base import CredentialError
from reconciler.credentials.oauth import TokenManager, check_provider
from reconciler.credentials.sources import EnvSource, FileSource, SourceRouter
from reconciler.devservers.oauth import OAuthServer
from tests.support import canary
from tests.support.oauth_server import GMAIL_SCOPE, M365_SCOPE, MAILBOX, make_server, provider
from tests.support.oauth_server import oauth_server as oauth_server

ENV = {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET, "SMTPCTL_TEST_RT": canary.REFRESH_TOKEN}


def manager(env: dict[str, str] | None = None, **kwargs: Any) -> TokenManager:
    kwargs.setdefault("retry_initial_seconds", 0.01)
    kwargs.setdefault("retry_max_seconds", 0.02)
    kwargs.setdefault("timeout_seconds", 2)
    sources = SourceRouter(env=EnvSource(ENV if env is None else env), file=FileSource())
    return TokenManager(sources, **kwargs)


def assert_clean(*objs: object) -> None:
    canary.assert_no_canary(*(repr(o) + str(o) for o in objs), where="test output")


async def test_client_credentials_m365_shape(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server)
    tm = manager()
    token = await tm.token(p)
    info = oauth_server.token_info(token.reveal())
    assert info is not None
    assert info.scope == (M365_SCOPE,)
    assert info.subject == MAILBOX
    assert tm.provider_version(p) is not None
    assert_clean(token, tm.provider_version(p))


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_both_client_auth_methods(oauth_server: OAuthServer, method: str) -> None:
    p = provider(oauth_server, tokenEndpointAuthMethod=method)
    token = await manager().token(p)
    assert oauth_server.is_valid(token.reveal())


async def test_refresh_token_gmail_shape(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, grant="RefreshToken")
    token = await manager().token(p)
    info = oauth_server.token_info(token.reveal())
    assert info is not None and info.subject == MAILBOX and info.scope == (GMAIL_SCOPE,)
    assert oauth_server.requests[-1] == ("/token", "refresh_token")


async def test_cache_reused_until_expiry_minus_skew(oauth_server: OAuthServer) -> None:
    now = [1000.0]
    tm = manager(clock=lambda: now[0], skew_seconds=60)
    p = provider(oauth_server)
    first = await tm.token(p)
    assert await tm.token(p) == first
    now[0] += 3600 - 61
    assert await tm.token(p) == first
    now[0] += 2  # inside the skew window: refreshed early
    second = await tm.token(p)
    assert second != first
    assert tm.requests == 2


async def test_force_refresh_gets_new_token(oauth_server: OAuthServer) -> None:
    tm = manager()
    p = provider(oauth_server)
    first = await tm.token(p)
    second = await tm.token(p, force_refresh=True)
    assert first != second and oauth_server.is_valid(second.reveal())


async def test_single_flight_concurrent_callers(oauth_server: OAuthServer) -> None:
    oauth_server.delay_next(1, 0.3)
    tm = manager()
    p = provider(oauth_server)
    tokens = await asyncio.gather(*(tm.token(p) for _ in range(20)))
    assert len({t.reveal() for t in tokens}) == 1
    assert tm.requests == 1
    # Concurrent force_refresh callers that saw the same rejected token share one refresh.
    refreshed = await asyncio.gather(*(tm.token(p, force_refresh=True) for _ in range(5)))
    assert len({t.reveal() for t in refreshed}) == 1
    assert tm.requests == 2


async def test_secret_rotation_invalidates_cache(oauth_server: OAuthServer) -> None:
    env = dict(ENV)
    tm = manager(env)
    p = provider(oauth_server)
    first = await tm.token(p)
    v1 = tm.provider_version(p)
    env["SMTPCTL_TEST_CS"] = "wrong-" + canary.CLIENT_SECRET
    with pytest.raises(CredentialError) as exc:
        await tm.token(p)
    assert exc.value.reason == "OAuth2InvalidClient"
    env["SMTPCTL_TEST_CS"] = canary.CLIENT_SECRET
    again = await tm.token(p)
    assert again == first  # back to the same versions: cached token still valid
    assert tm.provider_version(p) == v1


@pytest.mark.parametrize(
    ("kwargs", "env", "reason"),
    [
        ({}, {"SMTPCTL_TEST_CS": "nope-" + canary.CLIENT_SECRET}, "OAuth2InvalidClient"),
        ({"client_id": "nobody"}, None, "OAuth2InvalidClient"),
        ({"scopes": ["https://graph.microsoft.com/.default"]}, None, "OAuth2InvalidScope"),
        ({"grant": "RefreshToken"}, {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET,
                                     "SMTPCTL_TEST_RT": "revoked-" + canary.REFRESH_TOKEN},
         "OAuth2InvalidGrant"),
        ({"grant": "RefreshToken", "client_id": "m365-app",
          "client_secret_from": {"env": "SMTPCTL_TEST_CS"}}, None, "OAuth2InvalidGrant"),
    ],
)
async def test_token_endpoint_errors_map_to_reasons(
    oauth_server: OAuthServer, kwargs: dict[str, Any], env: dict[str, str] | None, reason: str
) -> None:
    p = provider(oauth_server, **kwargs)
    tm = manager(env)
    with pytest.raises(CredentialError) as exc:
        await tm.token(p)
    assert exc.value.reason == reason
    assert reason in catalog.CATALOG
    assert "answered" in exc.value.message  # names the endpoint's error
    assert_clean(exc.value, exc.value.message)
    assert tm.requests == 1  # not retried


async def test_unauthorized_client_and_generic_error(oauth_server: OAuthServer) -> None:
    from reconciler.devservers.oauth import ClientConfig

    oauth_server.add_client(ClientConfig("cc-only", canary.CLIENT_SECRET,
                                         grants=("client_credentials",)))
    oauth_server.add_refresh_token(canary.REFRESH_TOKEN + "-2", "cc-only")
    p = provider(oauth_server, grant="RefreshToken", client_id="cc-only",
                 client_secret_from={"env": "SMTPCTL_TEST_CS"}, scopes=[])
    with pytest.raises(CredentialError) as exc:
        await manager().token(p)
    assert exc.value.reason == "OAuth2UnauthorizedClient"
    oauth_server.error_next(1, "access_denied")
    with pytest.raises(CredentialError) as exc:
        await manager().token(provider(oauth_server))
    assert exc.value.reason == "OAuth2TokenEndpointError"
    assert "access_denied" in exc.value.message


async def test_transient_5xx_is_retried_then_succeeds(oauth_server: OAuthServer) -> None:
    oauth_server.fail_next(2, 503)
    tm = manager(attempts=3)
    token = await tm.token(provider(oauth_server))
    assert oauth_server.is_valid(token.reveal())
    assert tm.requests == 3


async def test_transient_oauth_error_is_retried(oauth_server: OAuthServer) -> None:
    oauth_server.error_next(1, "temporarily_unavailable")
    tm = manager(attempts=2)
    await tm.token(provider(oauth_server))
    assert tm.requests == 2


async def test_persistent_5xx_gives_unavailable(oauth_server: OAuthServer) -> None:
    oauth_server.fail_next(10, 502)
    tm = manager(attempts=3)
    with pytest.raises(CredentialError) as exc:
        await tm.token(provider(oauth_server))
    assert exc.value.reason == "OAuth2TokenEndpointUnavailable"
    assert catalog.get(exc.value.reason).retryable
    assert tm.requests == 3


async def test_slow_endpoint_times_out_as_unavailable(oauth_server: OAuthServer) -> None:
    oauth_server.delay_next(2, 1.0)
    tm = manager(attempts=2, timeout_seconds=0.2)
    with pytest.raises(CredentialError) as exc:
        await tm.token(provider(oauth_server))
    assert exc.value.reason == "OAuth2TokenEndpointUnavailable"
    assert "within" in exc.value.message  # the request timeout or the overall deadline


async def test_unreachable_endpoint() -> None:
    with make_server() as server:
        p = provider(server)
    # The server is stopped: its port is closed, connections are refused.
    tm = manager(attempts=2)
    with pytest.raises(CredentialError) as exc:
        await tm.token(p)
    assert exc.value.reason == "OAuth2TokenEndpointUnavailable"


async def test_http_token_endpoint_refused_at_request_time(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server)
    # Bypass validation, as a hand-built object could: the manager checks again.
    bad_spec = p.spec.model_copy(update={"token_endpoint": "http://example.com/token"})
    bad = p.model_copy(update={"spec": bad_spec})
    with pytest.raises(CredentialError) as exc:
        await manager().token(bad)
    assert exc.value.reason == "InvalidSpec"
    assert "https" in exc.value.message


async def test_error_description_scrubbed_of_sent_secrets(oauth_server: OAuthServer) -> None:
    """A provider that echoes the secret back must not make us print it."""
    from reconciler.credentials.oauth import scrub
    from reconciler.secret import Secret

    text = scrub(f"bad secret {canary.CLIENT_SECRET}\nline two", [Secret(canary.CLIENT_SECRET)])
    assert canary.CLIENT_SECRET not in text and "\n" not in text


async def test_check_provider_ready_with_test_endpoint(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, testEndpoint=oauth_server.test_url)
    check = await check_provider(p, manager())
    assert check.ready and check.reason == "TokenObtained"
    assert "test endpoint" in check.message
    assert ("/test", "") in oauth_server.requests
    assert_clean(check)


async def test_check_provider_test_endpoint_rejects(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, testEndpoint=oauth_server.url + "/nowhere")
    check = await check_provider(p, manager())
    assert not check.ready and check.reason == "OAuth2TestEndpointFailed"
    assert "404" in check.message


async def test_check_provider_refetches_on_401(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, testEndpoint=oauth_server.test_url)
    tm = manager()
    await tm.token(p)
    oauth_server.expire_access_tokens()  # cached token now dead at the server
    check = await check_provider(p, tm)
    assert check.ready
    assert tm.requests == 2


async def test_check_provider_not_ready(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, scopes=["nope"])
    check = await check_provider(p, manager())
    assert not check.ready and check.reason == "OAuth2InvalidScope"
    assert_clean(check)


async def test_https_token_endpoint_with_private_ca() -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with make_server(ssl_context=server_ctx) as server:
        assert server.token_url.startswith("https://")
        p = provider(server)
        token = await manager(verify=client_ctx).token(p)
        assert server.is_valid(token.reveal())
        # Without the CA the certificate is rejected: unavailable, never a plaintext retry.
        with pytest.raises(CredentialError) as exc:
            await manager(attempts=1).token(p)
        assert exc.value.reason == "OAuth2TokenEndpointUnavailable"


async def test_ipv6_loopback_endpoint() -> None:
    with make_server(host="::1") as server:
        assert server.token_url.startswith("http://[::1]:")
        token = await manager().token(provider(server))
        assert server.is_valid(token.reveal())


def test_devserver_binds_loopback_only() -> None:
    with pytest.raises(ValueError):
        OAuthServer(host="0.0.0.0")


async def test_devserver_rfc6749_details(oauth_server: OAuthServer) -> None:
    """Spot checks of the server's protocol behaviour the client relies on."""
    import httpx

    async with httpx.AsyncClient() as http:
        # Basic auth failure: 401 + WWW-Authenticate (RFC 6749 5.2).
        r = await http.post(oauth_server.token_url, data={"grant_type": "client_credentials"},
                            auth=("m365-app", "wrong"))
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
        assert r.headers["www-authenticate"].startswith("Basic")
        # Two client authentication methods at once: invalid_request.
        r = await http.post(oauth_server.token_url, auth=("m365-app", canary.CLIENT_SECRET),
                            data={"grant_type": "client_credentials",
                                  "client_secret": canary.CLIENT_SECRET})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        # Unknown grant type.
        r = await http.post(oauth_server.token_url, auth=("m365-app", canary.CLIENT_SECRET),
                            data={"grant_type": "password"})
        assert r.json()["error"] == "unsupported_grant_type"
        # A success is not cacheable and carries expires_in.
        r = await http.post(oauth_server.token_url, auth=("m365-app", canary.CLIENT_SECRET),
                            data={"grant_type": "client_credentials"})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
        assert body["scope"] == M365_SCOPE and "refresh_token" not in body
        # The test endpoint accepts exactly that token.
        r = await http.get(oauth_server.test_url,
                           headers={"Authorization": f"Bearer {body['access_token']}"})
        assert r.status_code == 200 and r.json()["sub"] == MAILBOX
        r = await http.get(oauth_server.test_url, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
        # Introspection (RFC 7662) of a live token.
        r = await http.post(oauth_server.introspect_url, data={"token": body["access_token"]})
        intro = r.json()
        assert intro["active"] is True and intro["username"] == MAILBOX
        assert intro["scope"] == M365_SCOPE and intro["exp"] > 0
        # Revocation kills the access token (RFC 7009); unknown tokens still get 200.
        r = await http.post(oauth_server.revoke_url, auth=("m365-app", canary.CLIENT_SECRET),
                            data={"token": body["access_token"]})
        assert r.status_code == 200 and not oauth_server.is_valid(body["access_token"])
        r = await http.post(oauth_server.introspect_url, data={"token": body["access_token"]})
        assert r.json() == {"active": False}
        r = await http.post(oauth_server.revoke_url, auth=("m365-app", canary.CLIENT_SECRET),
                            data={"token": "unknown"})
        assert r.status_code == 200
        # A JSON body is not a form: invalid_request.
        r = await http.post(oauth_server.token_url, json={"grant_type": "client_credentials"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_credential_reasons_are_in_the_catalog() -> None:
    """Every reason the credentials layer can raise is a catalog entry (static scan)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "reconciler" / "credentials"
    found: set[str] = set()
    for path in root.glob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'CredentialError\(\s*"([A-Za-z0-9]+)"', text))
        found |= set(re.findall(r'"(OAuth2[A-Za-z0-9]+)"', text))
    assert len(found) > 15
    assert found <= set(catalog.CATALOG), found - set(catalog.CATALOG)


@pytest.mark.parametrize(
    ("status", "body", "reason", "needle"),
    [
        (200, {"token_type": "Bearer", "expires_in": 60}, "OAuth2TokenEndpointError",
         "without an access_token"),
        (200, {"access_token": canary.ACCESS_TOKEN_PREFIX + "mac", "token_type": "mac"},
         "OAuth2TokenEndpointError", "'mac'"),
        (400, {"error": "invalid_request", "error_description": "missing\nthing " + "x" * 400},
         "OAuth2TokenEndpointError", "invalid_request: missing thing"),
        (429, {"error": "slow_down"}, "OAuth2TokenEndpointError", "slow_down"),
        (200, {"access_token": canary.ACCESS_TOKEN_PREFIX + "x", "expires_in": "soon"},
         "OAuth2TokenEndpointError", "malformed"),
    ],
)
async def test_misbehaving_token_endpoint(oauth_server: OAuthServer, status: int,
                                          body: dict[str, Any], reason: str,
                                          needle: str) -> None:
    oauth_server.respond_next(status, body)
    with pytest.raises(CredentialError) as exc:
        await manager(attempts=1).token(provider(oauth_server))
    assert exc.value.reason == reason
    assert needle in exc.value.message
    assert len(exc.value.message) < 400  # error_description is bounded
    assert_clean(exc.value)


async def test_non_json_4xx_is_endpoint_error(oauth_server: OAuthServer) -> None:
    oauth_server.fail_next(1, 404)
    with pytest.raises(CredentialError) as exc:
        await manager().token(provider(oauth_server))
    assert exc.value.reason == "OAuth2TokenEndpointError" and "HTTP 404" in exc.value.message


@pytest.mark.parametrize(("expires_in", "cached_for"), [(None, 3600.0), ("120", 120.0),
                                                        (-5, 3600.0)])
async def test_expires_in_parsing(oauth_server: OAuthServer, expires_in: Any,
                                  cached_for: float) -> None:
    body: dict[str, Any] = {"access_token": canary.ACCESS_TOKEN_PREFIX + "x",
                            "token_type": "bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    oauth_server.respond_next(200, body)
    now = [0.0]
    tm = manager(clock=lambda: now[0], skew_seconds=10)
    p = provider(oauth_server)
    await tm.token(p)
    assert tm.expires_in(p) == cached_for - 10


async def test_server_error_oauth_code_is_retried(oauth_server: OAuthServer) -> None:
    oauth_server.error_next(1, "server_error")  # HTTP 500 with a JSON error body
    tm = manager(attempts=2)
    await tm.token(provider(oauth_server))
    assert tm.requests == 2


def test_heavy_stacks_are_imported_lazily() -> None:
    """Resolving env/file references must not import Kubernetes, authlib or httpx."""
    import subprocess
    import sys

    code = ("import sys, reconciler.credentials.sources, reconciler.credentials.resolve; "
            "print(sorted(m for m in ('kubernetes', 'authlib', 'httpx', 'aiohttp') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("var", ["HTTP_PROXY", "ALL_PROXY", "http_proxy"])
async def test_loopback_token_endpoint_bypasses_proxy_env(
    oauth_server: OAuthServer, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    # Regression: httpx sent even 127.0.0.1 token requests through HTTP(S)_PROXY, so any
    # proxy setting broke local token endpoints (OAuth2TokenEndpointUnavailable).
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    token = await manager().token(provider(oauth_server))
    assert oauth_server.token_info(token.reveal()) is not None
