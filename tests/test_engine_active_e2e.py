"""What applications are handed is exactly what passed (issue 12), end to end locally:
real aiosmtpd relays with real TLS on loopback, the real CLI in-process.

One test per finding; each failed before the fix:
1. a fallback-only pass handed out the implicit-TLS port that refused;
2. the TLS trust (CA bundle, server name, verification, minimum version) was dropped, and
   JavaMail claimed checkserveridentity=true for a test run with verification off;
3. --reveal printed a rotated password that had just failed its test;
4. a relay in use that went down looked healthy (and `get active` exited 0);
5. `apply --prune` removed the relay in use before its replacement was tested; a lost
   refresh-token rotation left apply at exit 0 and Ready;
6. day-2 controls: reconcile --force, --watch following file: secrets, the refreshInterval
   floor, certificate expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.engine_env import USER, Env, cond, e2e_fixture  # noqa: F401


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connecting is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_lines(out: str) -> dict[str, str]:
    pairs = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            pairs[k] = v.strip("'")
    return pairs


def props(out: str) -> dict[str, str]:
    return {k: v.replace("\\:", ":").replace("\\=", "=") for k, v in (
        line.split("=", 1) for line in out.splitlines() if line and not line.startswith("#"))}


def write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


# --- 1. the port and TLS mode handed out are the ones that passed --------------------------


def test_fallback_pass_hands_out_the_connection_that_passed(e2e: Env) -> None:
    dead = refused_port()
    relay = e2e.smtp("fb", selected=True, startTLS=False,
                     socketFactory={"class": "javax.net.ssl.SSLSocketFactory", "port": dead})
    code, out = e2e.cli("apply", "-f", str(e2e.write("fb.yaml", relay)))
    assert code == 0, out
    st = e2e.status("fb")
    assert "InsecureFallbackUsed" in st["lastTest"]["warnings"]
    assert st["active"]["port"] == e2e.relay.port and st["active"]["tlsMode"] == "starttls"
    assert st["active"]["fallbackUsed"] is True
    port = str(e2e.relay.port)
    env = env_lines(e2e.cli("get", "active", "-o", "env")[1])
    assert env["SMTP_PORT"] == port and env["SMTP_TLS_MODE"] == "starttls"
    assert env["SMTP_IMPLICIT_TLS"] == "false" and str(dead) not in env.values()
    data = json.loads(e2e.cli("get", "active", "-o", "json")[1])
    assert (data["port"], data["tlsMode"], data["fallbackUsed"]) == (e2e.relay.port,
                                                                     "starttls", True)
    jm = props(e2e.cli("get", "active", "-o", "javamail")[1])
    assert jm["mail.smtp.port"] == port and jm["mail.smtp.starttls.required"] == "true"
    assert "mail.smtp.ssl.enable" not in jm and "mail.smtp.socketFactory.port" not in jm
    y = yaml.safe_load(e2e.cli("get", "active", "-o", "yaml")[1])
    assert y["port"] == e2e.relay.port and y["tlsMode"] == "starttls"
    code, out = e2e.cli("describe", "externalsmtp", "fb")
    assert f"127.0.0.1:{port}, starttls" in out and "socketFactory fallback" in out
    assert f":{dead}" not in out.split("Conditions:")[0]


# --- 2. the TLS trust the test relied on ---------------------------------------------------


def test_tls_trust_is_handed_out(e2e: Env) -> None:
    relay = e2e.smtp("t", selected=True, tls={"caBundleFrom": {"file": str(e2e.ca_file)},
                                              "serverName": "localhost", "minVersion": "1.2"})
    assert e2e.cli("apply", "-f", str(e2e.write("t.yaml", relay)))[0] == 0
    env = env_lines(e2e.cli("get", "active", "-o", "env")[1])
    assert env["SMTP_TLS_VERIFY"] == "true" and env["SMTP_TLS_SERVER_NAME"] == "localhost"
    assert env["SMTP_TLS_MIN_VERSION"] == "1.2"
    assert env["SMTP_TLS_CA_FILE"] == str(e2e.ca_file)
    assert env["SMTP_TLS_CA_REF"] == f"file:{e2e.ca_file}"
    assert env["SMTP_TLS_CERT_NOT_AFTER"].endswith("Z")
    data = json.loads(e2e.cli("get", "active", "-o", "json")[1])
    assert data["tls"]["caBundleFrom"] == {"file": str(e2e.ca_file)}
    assert data["tls"]["serverName"] == "localhost" and data["tls"]["verify"] is True
    assert data["tls"]["version"].startswith("TLSv1.")
    out = e2e.cli("get", "active", "-o", "javamail")[1]
    assert props(out)["mail.smtp.ssl.checkserveridentity"] == "true"
    assert f"file:{e2e.ca_file}" in out and "verified against the name localhost" in out
    assert "ca=file:" in e2e.cli("describe", "externalsmtp", "t")[1]


def test_verification_off_is_handed_out_as_off(e2e: Env) -> None:
    relay = e2e.smtp("nv", selected=True, tls={"verify": False})
    assert e2e.cli("apply", "-f", str(e2e.write("nv.yaml", relay)))[0] == 0
    jm = props(e2e.cli("get", "active", "-o", "javamail")[1])
    assert jm["mail.smtp.ssl.checkserveridentity"] == "false"
    assert jm["mail.smtp.ssl.trust"] == "*"
    env = env_lines(e2e.cli("get", "active", "-o", "env")[1])
    assert env["SMTP_TLS_VERIFY"] == "false" and "SMTP_TLS_CA_FILE" not in env


# --- 3. --reveal hands out only the tested value -------------------------------------------


def test_reveal_refuses_a_rotated_password_that_failed(e2e: Env) -> None:
    good, bad = "reveal-good-value", "reveal-rotated-wrong"  # printed by --reveal: no canary
    e2e.relay.users["rot@example.test"] = good
    pw = e2e.root / "pw"
    write_secret(pw, good)
    relay = e2e.smtp("r", selected=True, user="rot@example.test")
    relay["spec"]["passwordFrom"] = {"file": str(pw)}
    f = e2e.write("r.yaml", relay)
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    code, out = e2e.cli("get", "active", "-o", "env", "--reveal")
    assert code == 0 and env_lines(out)["SMTP_PASSWORD"] == good
    write_secret(pw, bad)  # rotated to a value the relay does not accept
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 1, out  # Ready before, not after: this run found it broken
    st = e2e.status("r")
    ready = cond(st, "Ready")
    assert ready["reason"] == "AuthenticationFailed"
    assert "were not tested and are not handed out" in ready["message"]
    code, out = e2e.cli("get", "active", "-o", "env", "--reveal")
    assert code == 1 and bad not in out and good not in out
    assert "not the value that passed its test" in out
    code, out = e2e.cli("get", "active", "-o", "env")  # references only: still fine
    assert code == 0 and env_lines(out)["SMTP_GENERATION"] == "1"
    e2e.relay.users["rot@example.test"] = bad  # the server catches up with the rotation
    assert e2e.cli("reconcile", "--force")[0] == 0
    code, out = e2e.cli("get", "active", "-o", "env", "--reveal")
    assert code == 0 and env_lines(out)["SMTP_PASSWORD"] == bad


# --- 4. health of the relay in use, standby and failover -----------------------------------


def test_relay_in_use_going_down_is_visible(e2e: Env) -> None:
    with RelayServer(mode="starttls", users={USER: canary.PASSWORD}, ca=e2e.relay.ca) as down:
        f = e2e.write("d.yaml", e2e.smtp("d", selected=True, port=down.port))
        assert e2e.cli("apply", "-f", str(f))[0] == 0
        code, out = e2e.cli("get", "active", "-o", "env", "--require-ready")
        assert code == 0 and env_lines(out)["SMTP_READY"] == "true"
    # the relay is gone: re-verify now
    code, out = e2e.cli("reconcile", "--force")
    assert code == 1, out
    st = e2e.status("d")
    assert cond(st, "Selected")["status"] == "True"
    assert cond(st, "Selected")["reason"] == "ActiveRelayFailing"
    assert st["active"]["health"] == "Failing"
    code, out = e2e.cli("get", "active", "-o", "env")
    env = env_lines(out)
    assert code == 0 and env["SMTP_READY"] == "false" and env["SMTP_LAST_SUCCESS"]
    assert "is failing since" in out
    code, out = e2e.cli("get", "active", "-o", "json", "--require-ready")
    assert code == 1
    assert json.loads(out.split("\nsmtpctl:")[0])["failure"]["reason"] == "ConnectionRefused"
    code, out = e2e.cli("describe", "externalsmtp", "d")
    assert "health:      FAILING" in out and "ActiveRelayFailing" in out


def test_standby_takes_over_when_the_relay_in_use_goes_down(e2e: Env) -> None:
    with RelayServer(mode="starttls", users={USER: canary.PASSWORD}, ca=e2e.relay.ca) as prim:
        f = e2e.write("p.yaml", e2e.smtp("primary", selected=True, port=prim.port, priority=0),
                      e2e.smtp("standby", selected=True, priority=10))
        code, out = e2e.cli("validate", "-f", str(f), "--strict", state=False)
        assert code == 0, out  # the supported standby setup is not a mistake
        code, out = e2e.cli("plan", "-f", str(f))
        assert "'primary' becomes the relay in use if its test passes; 'standby' stands " \
            "by (priority 10)" in out, out
        assert "SelectionConflict" not in out  # before: "set selected: false on the others"
        assert e2e.cli("apply", "-f", str(f))[0] == 0
        assert json.loads(e2e.cli("get", "active", "-o", "json")[1])["relay"]["name"] == \
            "primary"
        assert cond(e2e.status("standby"), "Selected")["reason"] == "Standby"
    code, out = e2e.cli("reconcile", "--force")
    data = json.loads(e2e.cli("get", "active", "-o", "json", "--require-ready")[1])
    assert data["relay"]["name"] == "standby" and data["ready"] is True
    assert e2e.status("standby")["selected"] is True and not e2e.status("primary")["selected"]
    code, out = e2e.cli("describe", "externalsmtp", "standby")
    assert "Failover" in out


# --- 5. safe pruning, a lost refresh-token rotation ----------------------------------------


def test_prune_never_removes_the_relay_in_use_before_a_replacement_passed(e2e: Env) -> None:
    assert e2e.cli("apply", "-f", str(e2e.write("a.yaml", e2e.smtp("old", selected=True))))[0] \
        == 0
    broken = e2e.smtp("new", selected=True, user="nobody@example.test")  # a rename, broken
    f = e2e.write("a.yaml", broken)
    code, out = e2e.cli("apply", "-f", str(f), "--prune")
    assert code == 1, out
    assert "PruneDeferred" in out
    assert e2e.status("old")["selected"] is True  # still there, still in use
    assert json.loads(e2e.cli("get", "active", "-o", "json")[1])["relay"]["name"] == "old"
    f = e2e.write("a.yaml", e2e.smtp("new", selected=True))  # fixed
    code, out = e2e.cli("apply", "-f", str(f), "--prune")
    assert code == 0, out
    assert json.loads(e2e.cli("get", "active", "-o", "json")[1])["relay"]["name"] == "new"
    code, out = e2e.cli("get", "externalsmtp", "old")
    assert code == 1  # pruned once its replacement was Ready


def test_lost_refresh_token_rotation_is_a_visible_failure(e2e: Env,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    from tests.support.oauth_server import GMAIL_SCOPE, MAILBOX, make_server

    monkeypatch.setenv("SMTPCTL_TEST_CS", canary.CLIENT_SECRET)
    monkeypatch.setenv("SMTPCTL_TEST_RT", canary.REFRESH_TOKEN)  # env: read-only source
    with make_server(rotate_refresh_tokens=True) as idp:
        provider = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
                    "metadata": {"name": "gmail"},
                    "spec": {"grantType": "RefreshToken", "clientId": "gmail-app",
                             "clientSecretFrom": {"env": "SMTPCTL_TEST_CS"},
                             "refreshTokenFrom": {"env": "SMTPCTL_TEST_RT"},
                             "tokenEndpoint": idp.token_url, "scopes": [GMAIL_SCOPE]}}
        e2e.relay.token_validator = lambda user, token: idp.token_info(token) is not None \
            and user == MAILBOX
        relay = e2e.oauth_smtp("g", "gmail")
        relay["spec"]["username"] = MAILBOX
        code, out = e2e.cli("apply", "-f", str(e2e.write("g.yaml", provider, relay)))
    assert code == 1, out
    p = e2e.status("gmail", "OAuth2Provider")
    assert cond(p, "Ready")["status"] == "False"
    assert cond(p, "Ready")["reason"] == "RefreshTokenNotPersisted"
    assert cond(p, "Stalled")["status"] == "True"
    assert "RefreshTokenNotPersisted" in out  # reported by the run (and as an Event)
    from reconciler.stores.base import ObjectRef
    from reconciler.stores.local import LocalStore

    with LocalStore(e2e.state, create=False) as store:
        reasons = [e.reason for e in store.events_sync(ObjectRef("OAuth2Provider", "default",
                                                                 "gmail"))]
    assert "RefreshTokenNotPersisted" in reasons


# --- 6. day-2 controls ---------------------------------------------------------------------


def test_reconcile_force_reverifies_now(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a", selected=True))
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    n = e2e.relay.connections
    assert e2e.cli("reconcile")[0] == 0 and e2e.relay.connections == n  # not due
    code, _ = e2e.cli("reconcile", "--force")
    assert code == 0 and e2e.relay.connections == n + 1


def test_refresh_interval_floor(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a", refreshInterval="0s"))
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 0 and "RefreshIntervalRaised" in out
    assert e2e.status("a")["warnings"] == ["RefreshIntervalRaised"]
    n = e2e.relay.connections
    assert e2e.cli("reconcile")[0] == 0 and e2e.relay.connections == n  # not every second


def test_certificate_expiry_is_recorded_and_warned_about(e2e: Env) -> None:
    soon = datetime.now(UTC) + timedelta(days=5)
    with RelayServer(mode="starttls", users={USER: canary.PASSWORD}, ca=e2e.relay.ca,
                     cert_not_after=soon) as relay:
        f = e2e.write("c.yaml", e2e.smtp("c", selected=True, port=relay.port))
        code, out = e2e.cli("apply", "-f", str(f))
    assert code == 0 and "CertificateExpiringSoon" in out
    st = e2e.status("c")
    assert st["active"]["tls"]["certificateNotAfter"] == soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "CertificateExpiringSoon" in st["warnings"]
    ok = e2e.status("c")
    assert cond(ok, "Ready")["status"] == "True"  # a warning, not a failure (yet)


def test_watch_follows_a_rotated_secret_file(e2e: Env) -> None:
    """`--watch` re-tests when a file: secret changes - not at the next refreshInterval (1h
    here: without the file check this waits out the deadline and fails)."""
    from reconciler.runtimes.local import build_world, watch
    from reconciler.stores.local import LocalStore

    first, second = canary.canary("watch-1"), canary.canary("watch-2")
    e2e.relay.users["w@example.test"] = first
    pw = e2e.root / "pw"
    write_secret(pw, first)
    relay = e2e.smtp("w", selected=True, user="w@example.test")
    relay["spec"]["passwordFrom"] = {"file": str(pw)}
    assert e2e.cli("apply", "-f", str(e2e.write("w.yaml", relay)))[0] == 0
    before = e2e.status("w")["active"]["credentialVersion"]

    async def scenario() -> None:
        store = LocalStore(e2e.state, create=False)
        world = build_world(store)
        tested, looked, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

        def progress(r: Any) -> None:
            looked.set()  # the first pass ran (and took its look at the file)
            if r.ref.name == "w" and r.tested:
                tested.set()

        task = asyncio.create_task(watch(store, world, None, progress=progress, stop=stop,
                                         poll=0.2))
        try:
            await asyncio.wait_for(looked.wait(), timeout=30)
            assert not tested.is_set()
            e2e.relay.users["w@example.test"] = second
            write_secret(pw, second)
            os.utime(pw, ns=(1, 1))  # a different mtime even on a coarse-grained clock
            await asyncio.wait_for(tested.wait(), timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
            store.close()

    asyncio.run(scenario())
    st = e2e.status("w")
    assert cond(st, "Ready")["status"] == "True"
    assert st["active"]["credentialVersion"] != before
