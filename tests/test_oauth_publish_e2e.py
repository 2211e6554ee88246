"""The OAuth relay in use is published by the operator whatever order its provider's two
writes (the status, then the test memo) reach the relay's pass in.

The real ``smtpctl operator`` on the strict API emulator, the dev OAuth server rotating the
refresh token on every grant, a relay that accepts only that server's live tokens
(:mod:`tests.support.oauth_relay`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import kmock

from reconciler.stores.kube import MEMO_FIELD
from tests.support import canary
from tests.support.kube_operator import (
    GROUP,
    VERSION,
    OperatorProcess,
    cluster,
    condition,
    wait_for,
)
from tests.support.oauth_relay import oauth_relay

NS = "mail"
PUBLISHED = "smtp-active-relay"


def test_relay_tested_before_its_providers_memo_is_written_is_published(
        tmp_path: Path) -> None:
    """The operator writes an OAuth2Provider's status (Ready) and then, in a second request,
    its test memo.  A relay pass in between recorded no tested version of the provider, and
    the publisher then refused the relay in use until its next re-verification (an hour
    here), logging "no recorded tested version (it was tested by an older smtpctl)": nothing
    woke the relay when the memo came.  Here the API server holds the memo write until the
    relay's test has passed (a slow API server can do the same); before the fix the Secret
    was never published."""
    with cluster(tmp_path) as c, oauth_relay(grant="RefreshToken", rotate=True) as env:
        emu = c.kube.emu
        assert emu is not None
        released: asyncio.Event = c.kube.call(asyncio.Event)
        held: list[str] = []

        async def hold() -> None:  # returns nothing: the API server then handles the PATCH
            held.append("memo")
            try:
                await asyncio.wait_for(released.wait(), 60)
            except TimeoutError:
                pass

        c.kube.call(lambda: emu["patch", kmock.resource(GROUP, VERSION, "oauth2providers")]
                    << hold)
        env.install(c, NS)
        c.create_smtp(NS, "oauth", env.relay_spec())

        def in_use() -> bool:
            relay = c.smtp(NS, "oauth") or {}
            return condition(relay, "Ready").get("status") == "True" and \
                bool((relay.get("status") or {}).get("selected"))

        with OperatorProcess(c, "op", "--namespace", NS) as op:
            wait_for("the relay Ready and selected", in_use, timeout=60)
            assert held, "the provider's memo write was not held: the race was not set up"
            c.kube.call(released.set)
            data = wait_for("the relay in use published", lambda: c.secret_data(NS, PUBLISHED),
                            timeout=30)
            assert data["SMTP_AUTH"] == "OAuth2" and data["SMTP_OAUTH2_PROVIDER"] == "idp"
            assert env.idp.token_info(data["SMTP_OAUTH2_TOKEN"]) is not None
            rotated = (c.secret_data(NS, "idp") or {}).get("refresh-token")
            assert rotated and rotated != canary.REFRESH_TOKEN, "no refresh token was rotated"
            refused = [r for r in op.logs() if "untested" in str(r.get("msg"))]
            assert not refused, refused
        active = (c.smtp(NS, "oauth") or {})["status"]["active"]
        assert str(active.get("credentialVersion", "")).startswith("o:"), active


def test_a_record_of_an_earlier_smtpctl_keeps_being_published(tmp_path: Path) -> None:
    """Active records written before the fix above hold the provider's memo digest
    (``sha256:...``) as ``credentialVersion``, not the token manager's ``o:`` version.  The
    publisher compares those with the memo digest, as before: after an upgrade the published
    token is still refreshed (compared with the new version, it was refused as untested
    until the relay's next re-verification, and the mounted token expired meanwhile)."""
    with cluster(tmp_path) as c, oauth_relay(token_lifetime=20.0) as env:
        env.install(c, NS)
        c.create_smtp(NS, "oauth", env.relay_spec())
        with OperatorProcess(c, "op", "--namespace", NS) as op:
            first = wait_for("a published token", lambda: (
                c.secret_data(NS, PUBLISHED) or {}).get("SMTP_OAUTH2_TOKEN"), timeout=60)
            provider = c.co.get_namespaced_custom_object(
                GROUP, VERSION, NS, "oauth2providers", "idp")
            assert isinstance(provider, dict)
            memo = provider["status"][MEMO_FIELD]
            assert memo["digest"].startswith("sha256:")
            relay = c.co.get_namespaced_custom_object(GROUP, VERSION, NS, "externalsmtps",
                                                      "oauth")
            assert isinstance(relay, dict)
            assert relay["status"]["active"]["credentialVersion"].startswith("o:")
            relay["status"]["active"]["credentialVersion"] = memo["digest"]  # as then
            c.co.replace_namespaced_custom_object_status(GROUP, VERSION, NS, "externalsmtps",
                                                         "oauth", relay)
            tests = env.relay.connections
            second = wait_for("the token refreshed on the publisher's schedule", lambda: (
                lambda t: t if t and t != first else None)(
                (c.secret_data(NS, PUBLISHED) or {}).get("SMTP_OAUTH2_TOKEN")), timeout=40)
            assert env.idp.token_info(second) is not None
            assert env.relay.connections == tests  # no re-test: the legacy record was used
            active = (c.smtp(NS, "oauth") or {})["status"]["active"]
            assert active["credentialVersion"] == memo["digest"]
            refused = [r for r in op.logs() if "untested" in str(r.get("msg"))]
            assert not refused, refused
