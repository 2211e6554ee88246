"""End to end: token endpoint -> TokenManager -> probe -> an aiosmtpd relay that accepts
only live tokens of that token endpoint (XOAUTH2 / OAUTHBEARER over STARTTLS).

Microsoft-365 shape: client credentials, scope https://outlook.office365.com/.default,
the relay offers ``AUTH LOGIN XOAUTH2``.  Gmail shape: refresh-token grant, the relay
offers ``AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER``.  A token that dies between the
credential resolution and AUTH is refreshed once, and the test still passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.credentials.oauth import TokenManager
from reconciler.credentials.resolve import resolve_smtp_credentials
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.devservers.oauth import OAuthServer
from reconciler.devservers.smtp import RelayServer
from reconciler.probe.runner import run_probe
from reconciler.probe.verdict import Verdict
from reconciler.resources import ExternalSmtp, OAuth2Provider
from tests.support import canary
from tests.support.oauth_server import GMAIL_SCOPE, M365_SCOPE, MAILBOX, make_server, provider

ENV = {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET, "SMTPCTL_TEST_RT": canary.REFRESH_TOKEN}


def validator(oauth: OAuthServer, scope: str) -> Any:
    """The relay's XOAUTH2/OAUTHBEARER check: issued here, live, for this user and scope."""

    def check(user: str, token: str) -> bool:
        info = oauth.token_info(token)
        return info is not None and info.subject == user and scope in info.scope

    return check


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with make_server() as server:
        yield server


def relay_resource(relay: RelayServer, ca_file: Path, provider_name: str) -> ExternalSmtp:
    return ExternalSmtp.model_validate({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": "relay", "namespace": "default"},
        "spec": {
            "host": "127.0.0.1", "port": relay.port, "startTLS": True,
            "authentication": "OAuth2", "username": MAILBOX,
            "oauth2ProviderRef": {"name": provider_name},
            "tls": {"caBundleFrom": {"file": str(ca_file)}},
            "connectionTest": {"timeoutSeconds": 10},
        },
    })


async def probe(resource: ExternalSmtp, prov: OAuth2Provider, tm: TokenManager,
                sources: SourceRouter) -> Verdict:
    creds = await resolve_smtp_credentials(resource, providers={prov.metadata.name: prov},
                                           sources=sources, tokens=tm)
    return await run_probe(resource.spec, creds.probe)


def ca_file(tmp_path: Path, relay: RelayServer) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text(relay.ca_pem)
    path.chmod(0o644)
    return path


def assert_verdict_clean(v: Verdict) -> None:
    texts = [repr(v), v.message, *(line.line for line in v.transcript), str(v.details)]
    canary.assert_no_canary(*texts, where="verdict")


@pytest.mark.parametrize("shape", ["m365", "gmail", "gmail-oauthbearer"])
async def test_provider_shapes_pass_end_to_end(oauth: OAuthServer, tmp_path: Path,
                                               shape: str) -> None:
    if shape == "m365":
        prov = provider(oauth, name="m365")
        mechanisms: tuple[str, ...] = ("LOGIN", "XOAUTH2")
        scope = M365_SCOPE
    else:
        prov = provider(oauth, name="gmail", grant="RefreshToken")
        mechanisms = (("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER") if shape == "gmail"
                      else ("OAUTHBEARER",))
        scope = GMAIL_SCOPE
    sources = SourceRouter(env=EnvSource(ENV))
    tm = TokenManager(sources)
    with RelayServer(mode="starttls", mechanisms=mechanisms, allowed_senders=[MAILBOX],
                     token_validator=validator(oauth, scope)) as relay:
        resource = relay_resource(relay, ca_file(tmp_path, relay), prov.metadata.name)
        verdict = await probe(resource, prov, tm, sources)
        assert verdict.passed, (verdict.reason, verdict.message)
        expected = "OAUTHBEARER" if shape == "gmail-oauthbearer" else "XOAUTH2"
        assert verdict.details["mechanism"] == expected
        assert [(a.mechanism, a.username, a.success, a.tls) for a in relay.auth_attempts] == [
            (expected, MAILBOX, True, True)]
        assert_verdict_clean(verdict)
        # A second test reuses the cached token: no new token request.
        assert (await probe(resource, prov, tm, sources)).passed
        assert tm.requests == 1


async def test_token_expiring_mid_run_is_refreshed(oauth: OAuthServer, tmp_path: Path) -> None:
    prov = provider(oauth, name="m365")
    sources = SourceRouter(env=EnvSource(ENV))
    tm = TokenManager(sources)
    with RelayServer(mode="starttls", mechanisms=("LOGIN", "XOAUTH2"),
                     token_validator=validator(oauth, M365_SCOPE)) as relay:
        resource = relay_resource(relay, ca_file(tmp_path, relay), "m365")
        creds = await resolve_smtp_credentials(resource, providers={"m365": prov},
                                               sources=sources, tokens=tm)
        oauth.expire_access_tokens()  # the cached token dies before AUTH
        verdict = await run_probe(resource.spec, creds.probe)
        assert verdict.passed, (verdict.reason, verdict.message)
        assert tm.requests == 2
        assert [a.success for a in relay.auth_attempts] == [False, True]
        assert_verdict_clean(verdict)


class FakeClock:
    """A monotonic clock the test moves by hand (TokenManager's ``clock``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_short_lived_tokens_across_runs(tmp_path: Path) -> None:
    """Tokens that live 1 s: a run inside the token's life reuses it, a run after its end
    gets a fresh one before AUTH (the relay never sees the dead token).

    Time is an injected clock (no sleeps), read by the TokenManager and by the token
    endpoint alike: a token's life at the endpoint does not depend on how fast a loaded
    machine runs the test (with the endpoint on the real clock, a run whose first two
    probes took over 1 s saw the reused token rejected and a second token request).
    Against a build whose cache ignores expiry (``now < entry.expires_at`` dropped from
    ``TokenManager.token``), the second run sends the dead token: the relay's attempts
    read ``[True, True, False, True]`` and this test fails.
    """
    clock = FakeClock()
    with make_server(token_lifetime=1.0, clock=clock) as oauth:
        prov = provider(oauth, name="m365")
        sources = SourceRouter(env=EnvSource(ENV))
        tm = TokenManager(sources, clock=clock)
        with RelayServer(mode="starttls", mechanisms=("XOAUTH2",),
                         token_validator=validator(oauth, M365_SCOPE)) as relay:
            resource = relay_resource(relay, ca_file(tmp_path, relay), "m365")
            verdict = await probe(resource, prov, tm, sources)
            assert verdict.passed, (verdict.reason, verdict.message)
            assert tm.requests == 1
            # Expiry is lifetime minus a skew capped at half the lifetime: 0.5 s here.
            assert tm.expires_in(prov) == pytest.approx(0.5)

            clock.now += 0.3  # still inside the cached token's life: reused
            assert (await probe(resource, prov, tm, sources)).passed
            assert tm.requests == 1

            clock.now += 0.8  # 1.1 s after issue: dead at the endpoint and in the cache
            verdict = await probe(resource, prov, tm, sources)
            assert verdict.passed, (verdict.reason, verdict.message)
            assert tm.requests == 2
            assert [a.success for a in relay.auth_attempts] == [True, True, True]
            assert_verdict_clean(verdict)


async def test_token_rejected_even_after_refresh_fails_clearly(oauth: OAuthServer,
                                                               tmp_path: Path) -> None:
    """Scopes the relay does not accept: refreshed once, then OAuth2AuthenticationFailed."""
    prov = provider(oauth, name="m365")
    sources = SourceRouter(env=EnvSource(ENV))
    tm = TokenManager(sources)
    with RelayServer(mode="starttls", mechanisms=("XOAUTH2",),
                     token_validator=validator(oauth, "https://other.example/")) as relay:
        resource = relay_resource(relay, ca_file(tmp_path, relay), "m365")
        verdict = await probe(resource, prov, tm, sources)
        assert not verdict.passed
        assert verdict.reason == "OAuth2AuthenticationFailed"
        assert verdict.token_rejected
        assert tm.requests == 2  # one refresh, not a loop
        assert_verdict_clean(verdict)


def test_dev_server_is_quiet_when_a_client_leaves_before_its_answer(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A client gone before its answer (a probe past its deadline, a finished test) is not a
    server error: before, every such request printed a traceback from the server's thread
    (and, once the test's stderr was closed, a thread exception in a full run)."""
    with make_server() as oauth:
        server = oauth._server
        assert server is not None
        request: Any = None  # handle_error reads only the exception being handled
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            server.handle_error(request, ("127.0.0.1", 1))
        assert capfd.readouterr().err == ""
        try:
            raise RuntimeError("a real fault")
        except RuntimeError:
            server.handle_error(request, ("127.0.0.1", 1))
        assert "a real fault" in capfd.readouterr().err  # real errors still shown
