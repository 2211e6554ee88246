"""The connection test's messages point at the right cause and fix (issue 13, "Messages").

Each case runs against a real server: aiosmtpd or the fault server on loopback, or - for
what loopback cannot produce (NXDOMAIN, SERVFAIL, ENETUNREACH, EHOSTUNREACH) - a real DNS
server and real routes inside a network namespace of our own (tests/support/netns_probe.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.smtp import RelayServer
from reconciler.probe import run_probe
from tests.support import canary
from tests.support.engine_env import Env, e2e_fixture  # noqa: F401
from tests.support.faults import FaultServer
from tests.support.faults import fault as fault  # the fixture
from tests.support.netns_probe import probe_in_netns
from tests.support.smtp_servers import make_spec, password_creds

NETNS_SPEC = {"port": 587, "authentication": "None", "from": "app@example.test",
              "connectionTest": {"timeoutSeconds": 4}}


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_says_refused_without_a_tuple(closed_port: int) -> None:
    v = await run_probe(make_spec(closed_port, timeout=2), password_creds())
    assert (v.reason, v.stage) == ("ConnectionRefused", "connect")
    assert f"127.0.0.1 port {closed_port} refused the connection" in v.message
    assert "('127.0.0.1'" not in v.message and "Connect call failed" not in v.message


def test_connection_refused_through_smtpctl_test(closed_port: int, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "*")
    monkeypatch.setenv("SMTP_PASSWORD", canary.PASSWORD)
    doc = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
           "metadata": {"name": "r"},
           "spec": {"host": "localhost", "port": closed_port, "authentication": "None",
                    "from": "a@example.test", "connectionTest": {"timeoutSeconds": 2}}}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert main(["test", "-f", str(f)]) == 1
    out = capfd.readouterr().out
    assert "FAILED at connect: ConnectionRefused (retry may help)" in out
    # the name as written, the address used, "refused"
    assert f"localhost (127.0.0.1) port {closed_port} refused the connection" in out or (
        f"localhost ([::1]) port {closed_port} refused the connection" in out)


@pytest.mark.parametrize("host,route,errno_name", [
    ("192.0.2.10", (), "ENETUNREACH"),            # no route to the network at all
    ("198.51.100.7", ("198.51.100.0/24",), "EHOSTUNREACH"),  # an unreachable route
])
def test_unreachable_is_not_a_wrong_port(host: str, route: tuple[str, ...],
                                         errno_name: str) -> None:
    v = probe_in_netns({**NETNS_SPEC, "host": host}, unreachable=route)
    assert (v["reason"], v["stage"]) == ("NetworkUnreachable", "connect")  # was ConnectionRefused
    assert errno_name in v["message"] and f"{host} port 587" in v["message"]
    assert "port is not the cause" in v["action"] and "Check the port" not in v["action"]


def test_nxdomain_needs_a_change_and_names_the_well_known_host() -> None:
    v = probe_in_netns({**NETNS_SPEC, "host": "smtp.gmial.com"})
    assert (v["reason"], v["stage"]) == ("UnknownHost", "resolve")
    assert v["retryable"] is False  # a typo does not heal: it said "retry may help" before
    assert "did you mean 'smtp.gmail.com'?" in v["message"]
    v = probe_in_netns({**NETNS_SPEC, "host": "mail.nowhere.example"})
    assert v["retryable"] is False and "did you mean" not in v["message"]


def test_servfail_is_transient() -> None:
    v = probe_in_netns({**NETNS_SPEC, "host": "flaky.example.test"},
                       servfail=("flaky.example.test",))
    assert (v["reason"], v["retryable"]) == ("UnknownHost", True)
    assert "temporarily" in v["message"]


async def test_implicit_tls_against_a_starttls_port_says_use_starttls() -> None:
    with RelayServer(mode="starttls") as server:
        v = await run_probe(make_spec(server.port, mode="implicit"), password_creds(server))
    assert (v.reason, v.stage) == ("ImplicitTLSToPlainPort", "tls")  # was TLSHandshakeFailed
    assert "this port speaks plain SMTP: use startTLS: true" in v.message
    assert "WRONG_VERSION_NUMBER" in v.message
    assert "TLS version" not in v.action and "spec.startTLS: true" in v.action


async def test_read_timeout_explains_the_budget(fault: type[FaultServer]) -> None:
    server = fault("no_banner")
    v = await run_probe(make_spec(server.port, timeout=4), password_creds())
    assert (v.reason, v.stage) == ("ReadTimeout", "banner")
    # it said "within 2.0s" although the user set 4
    assert "within 2s at stage banner" in v.message
    assert "half of spec.connectionTest.timeoutSeconds (4s)" in v.message


async def test_deadline_exceeded_shows_each_steps_share(fault: type[FaultServer]) -> None:
    server = fault("no_starttls", delay=0.9, extensions=("AUTH PLAIN LOGIN",))
    v = await run_probe(make_spec(server.port, mode="plain", timeout=4, allowPlaintextAuth=True),
                        password_creds())
    assert v.reason == "DeadlineExceeded"
    assert "spec.connectionTest.timeoutSeconds (4s) ran out at stage" in v.message
    assert "time per stage: " in v.message and "banner " in v.message


async def test_gmail_534_says_5_7_9_once(fault: type[FaultServer]) -> None:
    import trustme

    from tests.support.faults import server_context

    ca = trustme.CA()
    server = fault("ok", tls="implicit", server_context=server_context(ca.issue_cert("127.0.0.1")),
                   replies={"AUTH": "534-5.7.9 Application-specific password required. Learn "
                            "more at\r\n534 5.7.9  https://support.google.com/mail/"
                            "?p=InvalidSecondFactor"})
    v = await run_probe(make_spec(server.port, mode="implicit", timeout=3),
                        password_creds(ca_pem=ca.cert_pem.bytes().decode()))
    assert v.reason == "ApplicationPasswordRequired"
    assert v.message.count("5.7.9") == 1, v.message
    assert ("the server answered 534 5.7.9 Application-specific password required. Learn "
            "more at https://support.google.com/mail/?p=InvalidSecondFactor") in v.message


# --- apply shows warnings, messages and selection changes ------------------------------------


def test_apply_shows_warnings_with_their_action(e2e: Env, closed_port: int) -> None:
    import json

    unverified = e2e.smtp("v", tls={"verify": False})
    with RelayServer(mode="plain", auth_required=False) as plain:
        fallback = e2e.smtp("f", port=plain.port, startTLS=False, authentication="None",
                            socketFactory={"class": "javax.net.ssl.SSLSocketFactory",
                                           "port": closed_port, "fallback": True})
        fallback["spec"]["from"] = "app@example.test"
        del fallback["spec"]["username"], fallback["spec"]["passwordFrom"]
        f = e2e.write("w.yaml", unverified, fallback)
        code, out = e2e.cli("apply", "-f", str(f))
        assert code == 0, out
        # validate's warnings about the manifests, with file:line:col
        assert f"{f}:" in out and "certificate verification is disabled" in out
        # the tests' warnings (only a reason word was shown before), with the action
        assert ("default/v: warning: TLSVerificationDisabled: The server certificate was not "
                "verified; spec.tls.verify is false") in out
        assert "default/f: warning: InsecureFallbackUsed: Implicit TLS failed" in out
        assert "selection:" not in out  # nobody asked to be selected
        code, out = e2e.cli("apply", "-f", str(f), "-o", "json")
    items = {i["name"]: i for i in json.loads(out)["items"]}
    assert items["v"]["warnings"] == ["TLSVerificationDisabled"]
    assert items["f"]["warnings"] == ["InsecureFallbackUsed"]


def test_apply_shows_selection_changes_and_conflicts(e2e: Env) -> None:
    e2e.relay.users["other@example.test"] = canary.PASSWORD
    code, out = e2e.cli("apply", "-f", str(e2e.write("a.yaml", e2e.smtp("a", selected=True))))
    assert code == 0 and "selection: default: Active: 'a' is now the relay in use" in out
    both = e2e.write("ab.yaml", e2e.smtp("a", selected=True),
                     e2e.smtp("b", selected=True, user="other@example.test"))
    code, out = e2e.cli("plan", "-f", str(both))
    assert "selection: default: 'a' stays the relay in use; 'b' also ask(s) to be selected" \
        in out
    code, out = e2e.cli("apply", "-f", str(both))
    assert code == 0
    assert "warning: default/b asks to be selected, but ExternalSmtp 'a' is selected" in out


def test_plan_is_honest_about_what_apply_tests(e2e: Env, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.delenv("SMTP_PW")
    f = e2e.write("p.yaml", e2e.smtp("nopw"), e2e.provider(), e2e.oauth_smtp("o"),
                  e2e.oauth_smtp("lost", provider="missing"))
    code, out = e2e.cli("plan", "-f", str(f))
    assert code == 3
    lines = {line.split()[2]: line for line in out.splitlines() if line[:1] in "+~=-"}
    # it said "test: new resource" for a relay apply cannot test
    assert "not tested: credentials cannot be resolved (EnvVarNotSet" in lines[
        "ExternalSmtp/default/nopw"]
    # providers: apply requests a token (it said nothing / "no test")
    assert "check: a token is requested" in lines["OAuth2Provider/default/idp"]
    assert "test: new resource (if OAuth2Provider 'idp' gets a token)" in lines[
        "ExternalSmtp/default/o"]
    assert "not tested: OAuth2Provider 'missing' does not exist" in lines[
        "ExternalSmtp/default/lost"]
    assert "2 blocked" in out
    assert e2e.oauth.issued_access_tokens() == 0 and e2e.relay.connections == 0
