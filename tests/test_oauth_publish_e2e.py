"""The OAuth relay in use is published by the operator: its provider's status (Ready) and
test memo reach the relay's pass together.

The real ``smtpctl operator`` on the strict API emulator, the dev OAuth server rotating the
refresh token on every grant, a relay that accepts only that server's live tokens
(:mod:`tests.support.oauth_relay`).
"""

from __future__ import annotations

from pathlib import Path

import kubernetes

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


def test_a_ready_provider_carries_its_memo_and_its_relay_is_published(
        tmp_path: Path) -> None:
    """Before session 12 the operator wrote an OAuth2Provider's status (Ready) and then, in a
    second request, its test memo; a relay pass in between recorded no tested version of the
    provider and the publisher refused the relay in use (a test held that second write at
    the API server to provoke it).  Now the memo is in the same status write: every version
    of the provider the API server stored with Ready=True carries ``status.testMemo``, no
    PATCH of the provider is sent, and the relay in use is published."""
    with cluster(tmp_path) as c, oauth_relay(grant="RefreshToken", rotate=True) as env:
        emu = c.kube.emu
        assert emu is not None
        listed = c.co.list_namespaced_custom_object(GROUP, VERSION, NS, "oauth2providers")
        assert isinstance(listed, dict)
        since = listed["metadata"]["resourceVersion"]
        env.install(c, NS)
        c.create_smtp(NS, "oauth", env.relay_spec())

        def in_use() -> bool:
            relay = c.smtp(NS, "oauth") or {}
            return condition(relay, "Ready").get("status") == "True" and \
                bool((relay.get("status") or {}).get("selected"))

        with OperatorProcess(c, "op", "--namespace", NS) as op:
            wait_for("the relay Ready and selected", in_use, timeout=60)
            data = wait_for("the relay in use published", lambda: c.secret_data(NS, PUBLISHED),
                            timeout=30)
            assert data["SMTP_AUTH"] == "OAuth2" and data["SMTP_OAUTH2_PROVIDER"] == "idp"
            assert env.idp.token_info(data["SMTP_OAUTH2_TOKEN"]) is not None
            rotated = (c.secret_data(NS, "idp") or {}).get("refresh-token")
            assert rotated and rotated != canary.REFRESH_TOKEN, "no refresh token was rotated"
            refused = [r for r in op.logs() if "untested" in str(r.get("msg"))]
            assert not refused, refused
            requests = c.kube.call(lambda: [(str(r.method.value), r.url.path) for r in emu])
        active = (c.smtp(NS, "oauth") or {})["status"]["active"]
        assert str(active.get("credentialVersion", "")).startswith("o:"), active
        assert not [p for m, p in requests if m == "PATCH" and "/oauth2providers/" in p]
        ready = []
        for ev in kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
                c.co.list_namespaced_custom_object, GROUP, VERSION, NS, "oauth2providers",
                resource_version=since, timeout_seconds=1):
            status = ev["object"].get("status") or {}
            if condition(ev["object"], "Ready").get("status") == "True":
                ready.append(MEMO_FIELD in status)
        assert ready and all(ready)


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
