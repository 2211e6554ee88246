"""XOAUTH2 and OAUTHBEARER against the real relay, including the failure challenge."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reconciler.credentials.base import CredentialError
from reconciler.devservers.smtp import RelayServer
from reconciler.probe import Verdict, run_probe
from tests.support import canary
from tests.support.smtp_servers import (  # noqa: F401
    USER,
    TokenSource,
    make_spec,
    new_token,
    relay_fixture,
    shared_ca_fixture,
)

Relay = Callable[..., RelayServer]


def assert_clean(v: Verdict) -> None:
    canary.assert_no_canary(v.message, "\n".join(t.line for t in v.transcript),
                            repr(v.details), where="verdict")


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
async def test_oauth_mechanisms_pass(relay: Relay, mech: str) -> None:
    token = new_token()
    server = relay(mode="starttls", mechanisms=(mech, "PLAIN"), tokens={token: USER})
    source = TokenSource(token)
    v = await run_probe(make_spec(server.port, auth="OAuth2"), source.creds(server))
    assert v.passed, v.message
    assert v.details["mechanism"] == mech
    assert source.calls == [False]
    assert [(a.mechanism, a.username, a.success) for a in server.auth_attempts] == [
        (mech, USER, True)]
    assert_clean(v)


async def test_xoauth2_preferred_when_both_offered(relay: Relay) -> None:
    token = new_token()
    server = relay(mode="implicit", mechanisms=("XOAUTH2", "OAUTHBEARER"), tokens={token: USER})
    v = await run_probe(make_spec(server.port, mode="implicit", auth="OAuth2"),
                        TokenSource(token).creds(server))
    assert v.passed and v.details["mechanism"] == "XOAUTH2"


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
async def test_rejected_token_is_refreshed_once(relay: Relay, mech: str) -> None:
    stale, fresh = new_token(), new_token()
    server = relay(mode="starttls", mechanisms=(mech,), tokens={fresh: USER})
    source = TokenSource(stale, fresh)
    v = await run_probe(make_spec(server.port, auth="OAuth2"), source.creds(server))
    assert v.passed, v.message
    assert source.calls == [False, True]
    assert [a.success for a in server.auth_attempts] == [False, True]
    assert server.connections == 1  # re-AUTH on the same connection
    assert v.token_rejected is False
    # the challenge answer is in the transcript: empty line (XOAUTH2) or AQ== (OAUTHBEARER)
    answer = "" if mech == "XOAUTH2" else "AQ=="
    assert any(t.direction == "c" and t.line == answer for t in v.transcript)
    assert_clean(v)


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
async def test_token_rejected_twice_fails_with_decoded_challenge(relay: Relay, mech: str) -> None:
    server = relay(mode="starttls", mechanisms=(mech,))
    source = TokenSource(new_token(), new_token())
    v = await run_probe(make_spec(server.port, auth="OAuth2"), source.creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "OAuth2AuthenticationFailed", "auth")
    assert v.token_rejected is True
    assert source.calls == [False, True]
    assert "status=401" in v.message and "scope=" in v.message
    assert v.details["oauthError"]["status"] == "401"
    assert "OAuth 2.0" in v.action
    assert_clean(v)


async def test_token_provider_error_becomes_its_reason(relay: Relay) -> None:
    server = relay(mode="starttls", mechanisms=("XOAUTH2",))
    err = CredentialError("OAuth2InvalidClient", "the token endpoint said invalid_client")
    v = await run_probe(make_spec(server.port, auth="OAuth2"),
                        TokenSource(error=err).creds(server))
    assert (v.passed, v.reason, v.stage) == (False, "OAuth2InvalidClient", "credentials")
    assert "invalid_client" in v.message
    assert server.auth_attempts == []


async def test_oauth_against_password_only_server(relay: Relay) -> None:
    server = relay(mode="starttls", mechanisms=("PLAIN", "LOGIN"))
    v = await run_probe(make_spec(server.port, auth="OAuth2"), TokenSource().creds(server))
    assert (v.reason, v.stage) == ("AuthNotSupported", "auth")
    assert "PLAIN" in v.message
