"""`smtpctl apply/plan/get/describe/delete` end to end against a real loopback relay.

Each guarantee (docs/architecture.md) the engine owns has a test here: Ready only on a passed test,
last-known-good, one selected relay per scope (conflict, failover, delete), idempotency
(asserted through the relay's connection counter), rotation detected by version, prune,
plan exit codes, the apply lock, and the canary grep over outputs and the store file.
"""

from __future__ import annotations

import json

import pytest
import yaml

from reconciler.stores.local import LocalStore
from tests.support import canary
from tests.support.engine_env import USER, Env, cond, e2e_fixture  # noqa: F401


def test_idempotent_second_apply_runs_zero_tests(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a", selected=True), e2e.smtp("b"))
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 0, out
    first = e2e.relay.connections
    assert first == 2
    st = e2e.status("a")
    assert cond(st, "Ready")["status"] == "True" and st["selected"] is True
    assert cond(st, "Ready")["observedGeneration"] == 1 and st["observedGeneration"] == 1
    assert "Reconciling" not in [c["type"] for c in st["conditions"]]
    ltt = cond(st, "Ready")["lastTransitionTime"]
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 0 and e2e.relay.connections == first, out
    assert "0 tested" in out
    assert cond(e2e.status("a"), "Ready")["lastTransitionTime"] == ltt
    code, out = e2e.cli("apply", "-f", str(f), "-o", "json")
    report = json.loads(out)
    assert code == 0 and report["summary"]["tested"] == 0
    assert [(i["name"], i["operation"], i["test"]) for i in report["items"]] == [
        ("a", "unchanged", "skipped"), ("b", "unchanged", "skipped")]
    b = e2e.status("b")
    assert b["selected"] is False and cond(b, "Selected")["reason"] == "NotRequested"


def test_last_known_good_survives_a_broken_update(e2e: Env) -> None:
    good = e2e.smtp("a", selected=True)
    e2e.cli("apply", "-f", str(e2e.write("a.yaml", good)))
    bad = e2e.smtp("a", selected=True, user="nobody@example.test")
    code, _ = e2e.cli("apply", "-f", str(e2e.write("a.yaml", bad)))
    assert code == 1
    st = e2e.status("a")
    ready = cond(st, "Ready")
    assert st["generation"] == 2 and ready["status"] == "False"
    assert ready["reason"] == "AuthenticationFailed" and ready["observedGeneration"] == 2
    assert "generation 2 failed (AuthenticationFailed)" in ready["message"]
    assert "generation 1 remains in use" in ready["message"]
    assert cond(st, "Stalled")["status"] == "True"
    assert st["activeGeneration"] == 1 and st["active"]["username"] == USER
    assert st["selected"] is True
    code, env_out = e2e.cli("get", "active", "-o", "env")
    assert code == 0 and f"SMTP_USERNAME='{USER}'" in env_out
    assert "SMTP_GENERATION='1'" in env_out and "SMTP_PASSWORD=" not in env_out
    code, desc = e2e.cli("describe", "externalsmtp", "a")
    assert code == 0 and "latest generation 2 is not in use" in desc
    assert "AUTH PLAIN ******" in desc  # the redacted transcript
    stages_line = next(line for line in desc.splitlines() if "Stages:" in line)
    shown = [part.split()[0] for part in stages_line.split(":", 1)[1].split(",")]
    assert shown == ["resolve", "connect", "banner", "ehlo", "starttls", "auth"]  # wire order
    # a second apply of the same broken spec does not re-test (permanent, not due), and
    # exits 0: this apply changed nothing (a GitOps apply must not fail because a relay is
    # down); the row and its message still say it, and --require-ready fails on it
    n = e2e.relay.connections
    code, out = e2e.cli("apply", "-f", str(e2e.write("a.yaml", bad)))
    assert code == 0 and "AuthenticationFailed" in out and "action: " in out
    assert e2e.cli("apply", "-f", str(e2e.root / "a.yaml"), "--require-ready")[0] == 1
    assert e2e.relay.connections == n
    # fixing it makes generation 3 active
    assert e2e.cli("apply", "-f", str(e2e.write("a.yaml", good)))[0] == 0
    st = e2e.status("a")
    assert st["generation"] == 3 and st["activeGeneration"] == 3
    assert "Stalled" not in [c["type"] for c in st["conditions"]]


def test_never_ready_is_never_selected(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a", selected=True, user="nobody@example.test"))
    assert e2e.cli("apply", "-f", str(f))[0] == 1
    st = e2e.status("a")
    assert st.get("activeGeneration") is None and st["selected"] is False
    assert cond(st, "Selected")["reason"] == "NotReady"
    code, out = e2e.cli("get", "active")
    assert code == 1 and "no relay is selected" in out


def test_selection_conflict_failover_and_delete(e2e: Env, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    e2e.relay.users["other@example.test"] = canary.PASSWORD
    e2e.cli("apply", "-f", str(e2e.write("a.yaml", e2e.smtp("a", selected=True))))
    e2e.cli("apply", "-f", str(e2e.write("b.yaml", e2e.smtp(
        "b", selected=True, user="other@example.test", env="OTHER_PW"))))
    # b's env is not set yet: not Ready
    assert cond(e2e.status("b"), "Ready")["reason"] == "EnvVarNotSet"
    monkeypatch.setenv("OTHER_PW", canary.PASSWORD)
    e2e.cli("apply", "-f", str(e2e.root / "b.yaml"))
    a, b = e2e.status("a"), e2e.status("b")
    assert a["selected"] is True and b["selected"] is False
    assert cond(b, "Selected")["reason"] == "SelectionConflict"
    assert "'a'" in cond(b, "Selected")["message"]
    # a's password is rotated away at the server; re-verification fails -> failover to b
    new = canary.canary("rotated")
    e2e.relay.users[USER] = new
    monkeypatch.setenv("SMTP_PW", canary.canary("stale"))  # a changed secret -> re-test
    code, _ = e2e.cli("reconcile")
    assert code == 1
    a, b = e2e.status("a"), e2e.status("b")
    assert a["selected"] is False and b["selected"] is True
    assert cond(b, "Selected")["reason"] == "Active"
    _, desc = e2e.cli("describe", "externalsmtp", "b")
    assert "Failover" in desc
    # repair a, then delete the active b: a takes over
    monkeypatch.setenv("SMTP_PW", new)
    e2e.cli("reconcile")
    assert e2e.status("b")["selected"] is True  # the incumbent keeps it while Ready
    code, out = e2e.cli("delete", "externalsmtp", "b")
    assert code == 0 and "deleted" in out
    assert e2e.status("a")["selected"] is True
    # never two selected in the store
    with LocalStore(e2e.state, create=False) as store:
        assert sum(1 for o in store.list_sync("ExternalSmtp") if o.status.get("selected")) == 1


def test_rotation_is_detected_without_manifest_change(e2e: Env, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a"))
    e2e.cli("apply", "-f", str(f))
    n = e2e.relay.connections
    assert e2e.cli("plan", "-f", str(f))[0] == 0
    new = canary.canary("pw2")
    e2e.relay.users[USER] = new
    monkeypatch.setenv("SMTP_PW", new)
    code, out = e2e.cli("plan", "-f", str(f))
    assert code == 3 and "secrets or provider changed" in out
    assert e2e.relay.connections == n  # plan never tests
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    assert e2e.relay.connections == n + 1
    assert e2e.status("a")["generation"] == 1


def test_plan_exit_codes_and_no_side_effects(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a"))
    code, out = e2e.cli("plan", "-f", str(f))
    assert code == 3 and "+ create" in out
    assert not e2e.state.exists()  # plan writes nothing, not even a state directory
    e2e.cli("apply", "-f", str(f))
    assert e2e.cli("plan", "-f", str(f))[0] == 0
    changed = e2e.smtp("a", port=e2e.relay.port, refreshInterval="2h")
    code, out = e2e.cli("plan", "-f", str(e2e.write("b.yaml", changed)), "-o", "json")
    assert code == 3
    env = json.loads(out)
    assert (env["command"], env["exitCode"], env["summary"]["changes"]) == ("plan", 3, True)
    [item] = env["items"]
    assert item["operation"] == "update" and item["generation"] == 2
    assert item["diff"] == ['spec.refreshInterval: (unset) -> "2h"']
    assert e2e.status("a")["generation"] == 1
    # --dry-run is plan through apply: the same exit code (3: it exited 0 before), nothing
    # tested or written
    n = e2e.relay.connections
    code, out = e2e.cli("apply", "--dry-run", "-f", str(e2e.root / "b.yaml"), "-o", "json")
    assert code == 3 and e2e.relay.connections == n and e2e.status("a")["generation"] == 1
    dry = json.loads(out)
    assert dry["command"] == "apply" and dry["summary"]["dryRun"] is True
    assert dry["items"] == env["items"]


def test_prune_removes_resources_missing_from_input(e2e: Env) -> None:
    e2e.cli("apply", "-f", str(e2e.write("ab.yaml", e2e.smtp("a"), e2e.smtp("b"),
                                         e2e.smtp("c", namespace="other"))))
    code, out = e2e.cli("plan", "--prune", "-f", str(e2e.write("a.yaml", e2e.smtp("a"))))
    assert code == 3 and "- prune" in out
    code, out = e2e.cli("apply", "--prune", "-f", str(e2e.root / "a.yaml"))
    assert code == 0 and "pruned ExternalSmtp/default/b" in out
    code, out = e2e.cli("get", "-o", "json")
    names = {i["metadata"]["name"] for i in json.loads(out)["items"]}
    assert names == {"a", "c"}  # another namespace is another scope: untouched


def test_oauth_relay_and_provider_status(e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    f = e2e.write("o.yaml", e2e.provider(), e2e.oauth_smtp("o", selected=True))
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 0, out
    assert cond(e2e.status("idp", "OAuth2Provider"), "Ready")["status"] == "True"
    assert cond(e2e.status("o"), "Ready")["status"] == "True"
    n = e2e.relay.connections
    with LocalStore(e2e.state, create=False) as store:
        before = {o.ref: o.version for o in store.list_sync()}
    assert e2e.cli("apply", "-f", str(f))[0] == 0 and e2e.relay.connections == n
    # unchanged: no connection and not a single status write.  (Each apply process does
    # obtain one token per provider: tokens are secrets and are never persisted.)
    with LocalStore(e2e.state, create=False) as store:
        assert {o.ref: o.version for o in store.list_sync()} == before
    # a provider that cannot get a token: the relay carries the provider's own reason and
    # its flags (an invalid client secret is stalled, not "retry may help")
    monkeypatch.setenv("IDP_SECRET", canary.canary("wrong-secret"))
    f2 = e2e.write("o2.yaml", e2e.provider("idp2"), e2e.oauth_smtp("o2", "idp2"))
    code, _ = e2e.cli("apply", "-f", str(f2))
    assert code == 1
    p = e2e.status("idp2", "OAuth2Provider")
    assert cond(p, "Ready")["reason"] == "OAuth2InvalidClient"
    o2 = cond(e2e.status("o2"), "Ready")
    assert o2["reason"] == "OAuth2InvalidClient" and "OAuth2Provider 'idp2'" in o2["message"]
    assert cond(e2e.status("o2"), "Stalled")["status"] == "True"
    assert cond(e2e.status("o2"), "Reconciling") == {}
    # a reference to a provider that does not exist
    f3 = e2e.write("o3.yaml", e2e.oauth_smtp("o3", "missing"))
    assert e2e.cli("apply", "-f", str(f3))[0] == 1
    assert cond(e2e.status("o3"), "Ready")["reason"] == "OAuth2ProviderNotFound"


def test_lock_timeout_exits_2(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a"))
    e2e.cli("apply", "-f", str(f))
    holder = LocalStore(e2e.state)
    holder.lock(1)
    try:
        code, out = e2e.cli("apply", "-f", str(f), "--lock-timeout", "0.2")
    finally:
        holder.close()
    assert code == 2 and "another smtpctl apply is using" in out
    assert e2e.cli("apply", "-f", str(f))[0] == 0


def test_invalid_input_writes_nothing(e2e: Env) -> None:
    bad = e2e.smtp("a")
    bad["spec"]["port"] = 70000
    f = e2e.write("bad.yaml", e2e.smtp("ok"), bad)
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 1 and "spec.port" in out and "Traceback" not in out
    assert not (e2e.state / "state.db").exists() or e2e.cli("get", "-o", "json")[1].count(
        '"name"') == 0
    assert e2e.cli("apply", "-f", str(e2e.root / "missing.yaml"))[0] == 2
    (e2e.root / "broken.yaml").write_text("kind: [\n")
    code, out = e2e.cli("apply", "-f", str(e2e.root / "broken.yaml"))
    assert code == 1 and "broken.yaml" in out
    lit = e2e.smtp("lit")
    lit["spec"]["password"] = canary.PASSWORD
    code, out = e2e.cli("apply", "-f", str(e2e.write("lit.yaml", lit)))
    assert code == 1 and "literal secrets are not allowed" in out


def test_get_outputs_and_reveal(e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    visible = "not-a-secret-for-reveal"  # --reveal prints it by design: no canary here
    e2e.relay.users["reveal@example.test"] = visible
    monkeypatch.setenv("REVEAL_PW", visible)
    f = e2e.write("r.yaml", e2e.smtp("r", selected=True, user="reveal@example.test",
                                     env="REVEAL_PW"))
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    code, out = e2e.cli("get", "externalsmtp", "r", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert code == 0 and doc["metadata"]["generation"] == 1 and doc["status"]["selected"]
    code, out = e2e.cli("get", "active", "-o", "json")
    assert json.loads(out)["passwordFrom"] == {"env": "REVEAL_PW"} and visible not in out
    code, out = e2e.cli("get", "active", "-o", "env", "--reveal")
    assert code == 0 and f"SMTP_PASSWORD='{visible}'" in out
    code, out = e2e.cli("get", "active", "-o", "javamail")
    assert "mail.smtp.starttls.enable=true" in out and f"mail.smtp.port={e2e.relay.port}" in out
    code, out = e2e.cli("get", "-o", "wide")
    assert code == 0 and "default/r" in out
    assert e2e.cli("get", "externalsmtp", "nope")[0] == 1
    assert e2e.cli("get", "bogus")[0] == 2


def test_toggling_selected_needs_no_new_test(e2e: Env) -> None:
    # `a` first, so it is the incumbent: when two relays are first tested in the same apply,
    # whichever test finishes first becomes active and keeps it (see docs/engine.md).
    e2e.cli("apply", "-f", str(e2e.write("ab.yaml", e2e.smtp("a", selected=True))))
    e2e.cli("apply", "-f", str(e2e.write("ab.yaml", e2e.smtp("a", selected=True),
                                         e2e.smtp("b", selected=True))))
    assert e2e.status("a")["selected"] is True
    n = e2e.relay.connections
    f = e2e.write("ab.yaml", e2e.smtp("a", selected=False), e2e.smtp("b", selected=True))
    code, out = e2e.cli("plan", "-f", str(f))
    assert code == 3 and "connection settings unchanged" in out and "1 to test" not in out
    code, out = e2e.cli("apply", "-f", str(f))
    assert code == 0, out
    assert e2e.relay.connections == n  # a new generation, but the same tested settings
    a, b = e2e.status("a"), e2e.status("b")
    assert a["generation"] == 2 and a["observedGeneration"] == 2
    assert cond(a, "Ready")["status"] == "True" and cond(a, "Ready")["observedGeneration"] == 2
    assert a["activeGeneration"] == 2 and a["selected"] is False
    assert cond(a, "Selected")["reason"] == "NotRequested"
    assert b["selected"] is True and cond(b, "Selected")["reason"] == "Active"
    # and the next apply is a plain no-op
    assert e2e.cli("apply", "-f", str(f))[0] == 0 and e2e.relay.connections == n
    assert e2e.cli("plan", "-f", str(f))[0] == 0


def test_rejected_token_means_two_logins_not_more(e2e: Env) -> None:
    e2e.relay.token_validator = lambda user, token: False
    f = e2e.write("o.yaml", e2e.provider(), e2e.oauth_smtp("o"))
    code, _ = e2e.cli("apply", "-f", str(f))
    assert code == 1
    ready = cond(e2e.status("o"), "Ready")
    assert ready["reason"] == "OAuth2AuthenticationFailed"
    # the probe refreshed the token once and retried; the engine added no retry of its own
    oauth = [a for a in e2e.relay.auth_attempts if a.mechanism in ("XOAUTH2", "OAUTHBEARER")]
    assert len(oauth) == 2 and not any(a.success for a in oauth)


def test_plan_sees_a_provider_change_through_its_relays(e2e: Env) -> None:
    f = e2e.write("o.yaml", e2e.provider(), e2e.oauth_smtp("o"))
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    p = e2e.provider()
    p["spec"]["scopes"] = ["mail"]
    f = e2e.write("o.yaml", p, e2e.oauth_smtp("o"))
    code, out = e2e.cli("plan", "-f", str(f))
    assert code == 3 and "OAuth2Provider 'idp' changes" in out
    n = e2e.relay.connections
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    assert e2e.relay.connections == n + 1  # and apply does re-test it


def test_each_namespace_is_its_own_scope(e2e: Env) -> None:
    f = e2e.write("ns.yaml", e2e.smtp("a", selected=True),
                  e2e.smtp("b", selected=True, namespace="team-b"))
    assert e2e.cli("apply", "-f", str(f))[0] == 0
    assert e2e.status("a")["selected"] is True
    assert e2e.status("b", namespace="team-b")["selected"] is True
    code, out = e2e.cli("get", "active", "-n", "team-b", "-o", "json")
    assert code == 0 and json.loads(out)["relay"] == {"namespace": "team-b", "name": "b"}
    code, out = e2e.cli("get", "externalsmtp", "-n", "team-b", "-o", "json")
    assert [i["metadata"]["name"] for i in json.loads(out)["items"]] == ["b"]


def test_implicit_tls_relay_in_javamail_form(e2e: Env) -> None:
    from reconciler.devservers.smtp import RelayServer

    with RelayServer(mode="implicit", users={USER: canary.PASSWORD}, ca=e2e.relay.ca) as tls:
        doc = e2e.smtp("i", selected=True, port=587, startTLS=False,
                       socketFactory={"class": "javax.net.ssl.SSLSocketFactory",
                                      "port": tls.port, "fallback": False})
        code, out = e2e.cli("apply", "-f", str(e2e.write("i.yaml", doc)))
        assert code == 0, out
    code, out = e2e.cli("get", "active", "-o", "javamail")
    assert f"mail.smtp.port={tls.port}" in out and "mail.smtp.ssl.enable=true" in out
    assert "mail.smtp.socketFactory.fallback=false" in out
    assert "starttls" not in out
    code, out = e2e.cli("get", "active", "-o", "env")
    assert "SMTP_TLS_MODE='implicit'" in out and f"SMTP_PORT='{tls.port}'" in out


def test_transient_failure_keeps_reconciling_and_is_not_stalled(e2e: Env) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = e2e.write("t.yaml", e2e.smtp("t", port=port))
    assert e2e.cli("apply", "-f", str(f))[0] == 1
    st = e2e.status("t")
    assert cond(st, "Ready")["reason"] == "ConnectionRefused"
    assert cond(st, "Reconciling")["status"] == "True"
    assert cond(st, "Reconciling")["reason"] == "ConnectionRefused"
    assert cond(st, "Stalled") == {}
    # a retry is due after a short backoff, not at refreshInterval
    code, out = e2e.cli("plan", "-f", str(f))
    assert code == 0 and "last test failed; next retry in" in out  # backoff not over yet
