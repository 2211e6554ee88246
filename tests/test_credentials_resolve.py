"""resolve_smtp_credentials: ExternalSmtp references -> ProbeCredentials + versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from reconciler.credentials.base import CredentialError
from reconciler.credentials.oauth import TokenManager
from reconciler.credentials.resolve import resolve_smtp_credentials
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.devservers.oauth import OAuthServer
from reconciler.resources import ExternalSmtp
from tests.support import canary
from tests.support.oauth_server import MAILBOX, provider
from tests.support.oauth_server import oauth_server as oauth_server

ENV = {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET, "SMTPCTL_TEST_RT": canary.REFRESH_TOKEN,
       "SMTP_PW": canary.PASSWORD}


def smtp(**spec: Any) -> ExternalSmtp:
    body: dict[str, Any] = {"host": "smtp.example.test", "port": 587, "startTLS": True,
                            "username": MAILBOX, **spec}
    return ExternalSmtp.model_validate({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": "relay", "namespace": "default"}, "spec": body,
    })


def sources(env: dict[str, str] | None = None) -> SourceRouter:
    return SourceRouter(env=EnvSource(ENV if env is None else env))


async def test_password() -> None:
    r = smtp(authentication="UsernamePassword", passwordFrom={"env": "SMTP_PW"})
    creds = await resolve_smtp_credentials(r, providers={}, sources=sources())
    assert creds.probe.password is not None
    assert creds.probe.password.reveal() == canary.PASSWORD
    assert creds.probe.token_provider is None
    assert set(creds.versions) == {"passwordFrom"}
    canary.assert_no_canary(repr(creds), str(creds.versions))


async def test_password_version_changes_on_rotation() -> None:
    env = dict(ENV)
    r = smtp(authentication="UsernamePassword", passwordFrom={"env": "SMTP_PW"})
    v1 = (await resolve_smtp_credentials(r, providers={}, sources=sources(env))).versions
    env["SMTP_PW"] = canary.PASSWORD + "-new"
    v2 = (await resolve_smtp_credentials(r, providers={}, sources=sources(env))).versions
    assert v1 != v2


async def test_missing_password_source() -> None:
    r = smtp(authentication="UsernamePassword", passwordFrom={"env": "NOPE"})
    with pytest.raises(CredentialError) as exc:
        await resolve_smtp_credentials(r, providers={}, sources=sources())
    assert exc.value.reason == "EnvVarNotSet"


async def test_no_authentication() -> None:
    r = smtp(authentication="None", username=None)
    creds = await resolve_smtp_credentials(r, providers={}, sources=sources())
    assert creds.probe.password is None and creds.probe.token_provider is None
    assert creds.versions == {}


async def test_ca_bundle(tmp_path: Path) -> None:
    pem = trustme.CA().cert_pem.bytes().decode()
    ca = tmp_path / "ca.pem"
    ca.write_text(pem)
    ca.chmod(0o644)  # public: world-readable is fine for a CA bundle
    r = smtp(authentication="None", username=None, tls={"caBundleFrom": {"file": str(ca)}})
    creds = await resolve_smtp_credentials(r, providers={}, sources=sources())
    assert creds.probe.ca_bundle_pem == pem.rstrip("\n")
    assert "tls.caBundleFrom" in creds.versions


async def test_invalid_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    """Issue 9 (Low): an invalid CA bundle ended as a server ProtocolError ("unexpected
    SSLError" at the TLS stage).  It is a configuration error, named as such, before any
    connection is made."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    r = smtp(authentication="None", username=None, tls={"caBundleFrom": {"file": str(ca)}})
    with pytest.raises(CredentialError) as exc:
        await resolve_smtp_credentials(r, providers={}, sources=sources())
    assert exc.value.reason == "CABundleInvalid"
    assert str(ca) in exc.value.message and "PEM" in exc.value.message


async def test_oauth2_provider_not_found() -> None:
    r = smtp(authentication="OAuth2", oauth2ProviderRef={"name": "missing"})
    with pytest.raises(CredentialError) as exc:
        await resolve_smtp_credentials(r, providers={}, sources=sources())
    assert exc.value.reason == "OAuth2ProviderNotFound"
    assert "'missing'" in exc.value.message


async def test_oauth2_token_provider(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, name="m365")
    tm = TokenManager(sources())
    r = smtp(authentication="OAuth2", oauth2ProviderRef={"name": "m365"})
    creds = await resolve_smtp_credentials(r, providers={"m365": p}, sources=sources(),
                                           tokens=tm)
    assert creds.probe.token_provider is not None
    assert creds.versions == {"oauth2:m365": tm.provider_version(p)}
    first = await creds.probe.token_provider(False)
    assert oauth_server.is_valid(first.reveal())
    assert tm.requests == 1  # the token obtained during resolution is reused
    fresh = await creds.probe.token_provider(True)
    assert fresh != first and tm.requests == 2
    canary.assert_no_canary(repr(creds))


async def test_oauth2_without_manager_uses_throwaway(oauth_server: OAuthServer) -> None:
    p = provider(oauth_server, name="gmail", grant="RefreshToken")
    r = smtp(authentication="OAuth2", oauth2ProviderRef={"name": "gmail"})
    creds = await resolve_smtp_credentials(r, providers={"gmail": p}, sources=sources())
    assert creds.probe.token_provider is not None
    assert oauth_server.is_valid((await creds.probe.token_provider(False)).reveal())


@pytest.mark.parametrize(
    ("env", "cause"),
    [
        ({"SMTPCTL_TEST_CS": "wrong"}, "OAuth2InvalidClient"),
        ({}, "EnvVarNotSet"),
    ],
)
async def test_oauth2_provider_not_ready(oauth_server: OAuthServer, env: dict[str, str],
                                         cause: str) -> None:
    p = provider(oauth_server, name="m365")
    r = smtp(authentication="OAuth2", oauth2ProviderRef={"name": "m365"})
    with pytest.raises(CredentialError) as exc:
        await resolve_smtp_credentials(r, providers={"m365": p}, sources=sources(env))
    assert exc.value.reason == "OAuth2ProviderNotReady"
    assert exc.value.cause_reason == cause
    assert "'m365'" in exc.value.message and cause in exc.value.message
    canary.assert_no_canary(str(exc.value))
