"""``smtpctl test`` end to end: files in, verdicts out, against real loopback servers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.smtp_servers import OTHER, USER, relay_fixture, shared_ca_fixture  # noqa: F401

Relay = Callable[..., RelayServer]


def smtp_doc(name: str, server: RelayServer, ca_file: Path, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": server.port, "authentication": "UsernamePassword",
        "startTLS": True, "username": USER, "passwordFrom": {"env": "SMTP_PASSWORD"},
        "tls": {"caBundleFrom": {"file": str(ca_file)}},
        "connectionTest": {"timeoutSeconds": 5},
    }
    base.update(spec)
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name}, "spec": base}


def write(tmp_path: Path, *docs: dict[str, Any]) -> Path:
    path = tmp_path / "relays.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture
def ca_file(tmp_path: Path, relay: Relay) -> Path:
    path = tmp_path / "ca.pem"
    # every relay started by the fixture shares one CA
    path.write_text(relay(mode="plain").ca_pem)
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", canary.PASSWORD)
    # The trust model has its own tests (tests/test_security_cli.py); these allow env.
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "*")


def run_json(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """The result envelope, plus its items as ``results`` (the name the tests use)."""
    code = main(["test", *argv, "-o", "json"])
    out = capfd.readouterr().out
    canary.assert_no_canary(out, where="smtpctl test output")
    env = json.loads(out)
    assert (env["command"], env["exitCode"], env["ok"]) == ("test", code, code == 0)
    return code, {**env, "results": env["items"]}


def test_json_output_shape_and_exit_0(tmp_path: Path, relay: Relay, ca_file: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    server = relay(mode="starttls")
    code, data = run_json(capfd, "-f", str(write(tmp_path, smtp_doc("good", server, ca_file))))
    assert code == 0
    [r] = data["results"]
    assert set(r) == {"kind", "name", "namespace", "passed", "stage", "reason", "message",
                      "retryable", "warnings", "durationSeconds", "transcript", "details",
                      "file"}  # no "action" when there is nothing to do
    assert (r["kind"], r["name"], r["namespace"], r["passed"], r["reason"]) == (
        "ExternalSmtp", "good", "default", True, "TestPassed")
    # the probe's details reach scripts too (they were dropped from -o json before)
    d = r["details"]
    assert d["tlsMode"] == "starttls" and d["tlsVersion"].startswith("TLSv1")
    assert d["mechanism"] == "PLAIN" and d["relayCheck"] == "passed" and d["peer"]
    assert data["summary"] == {"documents": 1, "skipped": 0, "tested": 1, "passed": 1,
                               "failed": 0}
    assert isinstance(r["retryable"], bool) and isinstance(r["durationSeconds"], float)
    assert r["transcript"] and set(r["transcript"][0]) == {"direction", "line",
                                                           "elapsedSeconds"}
    assert {t["direction"] for t in r["transcript"]} == {"c", "s"}
    assert server.messages == []


def test_one_failure_exits_1_and_names_are_filtered(tmp_path: Path, relay: Relay,
                                                     ca_file: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    good = relay(mode="starttls")
    picky = relay(mode="starttls", allowed_senders=[OTHER])
    path = write(tmp_path, smtp_doc("good", good, ca_file), smtp_doc("picky", picky, ca_file))
    code, data = run_json(capfd, "-f", str(path))
    assert code == 1
    assert [(r["name"], r["passed"], r["reason"]) for r in data["results"]] == [
        ("good", True, "TestPassed"), ("picky", False, "SenderRejected")]
    assert data["results"][1]["stage"] == "mail_from"
    code, data = run_json(capfd, "-f", str(path), "--name", "good")
    assert code == 0 and [r["name"] for r in data["results"]] == ["good"]


def test_text_output_verbose_transcript(tmp_path: Path, relay: Relay, ca_file: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    server = relay(mode="starttls")
    path = write(tmp_path, smtp_doc("good", server, ca_file))
    assert main(["test", "-f", str(path), "-v"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("default/good: PASSED")
    assert "AUTH PLAIN" in out and "C: AUTH PLAIN ******" in out
    assert "S: 235" in out
    canary.assert_no_canary(out)


def test_text_output_failure_has_action(tmp_path: Path, relay: Relay, ca_file: Path,
                                        capfd: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    server = relay(mode="starttls")
    monkeypatch.setenv("SMTP_PASSWORD", canary.canary("wrong"))
    path = write(tmp_path, smtp_doc("bad", server, ca_file))
    assert main(["test", "-f", str(path)]) == 1
    out = capfd.readouterr().out
    assert "default/bad: FAILED at auth: AuthenticationFailed" in out
    assert "action: Check username and password" in out
    canary.assert_no_canary(out)


def test_unresolvable_reference_is_a_failed_result(tmp_path: Path, relay: Relay,
                                                   ca_file: Path,
                                                   capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server = relay(mode="starttls")
    monkeypatch.delenv("SMTP_PASSWORD")
    code, data = run_json(capfd, "-f", str(write(tmp_path, smtp_doc("x", server, ca_file))))
    assert code == 1
    [r] = data["results"]
    assert (r["passed"], r["stage"], r["reason"]) == (False, "credentials", "EnvVarNotSet")
    assert server.connections == 0


def test_secret_key_ref_without_cluster_says_so(tmp_path: Path, relay: Relay, ca_file: Path,
                                                capfd: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    server = relay(mode="starttls")
    doc = smtp_doc("k", server, ca_file,
                   passwordFrom={"secretKeyRef": {"name": "smtp", "key": "password"}})
    code, data = run_json(capfd, "-f", str(write(tmp_path, doc)))
    assert code == 1
    [r] = data["results"]
    assert r["reason"] == "KubernetesUnavailable"
    assert "kubeconfig" in (r["message"] + r["action"]).lower()


@pytest.mark.parametrize("argv,needle,code", [
    (["--name", "nope"], "no ExternalSmtp named", 1),  # NotFound, as in get/describe
    (["--deny-egress", "garbage"], "--deny-egress", 2),
])
def test_usage_errors_and_not_found(tmp_path: Path, relay: Relay, ca_file: Path,
                                    capfd: pytest.CaptureFixture[str], argv: list[str],
                                    needle: str, code: int) -> None:
    server = relay(mode="starttls")
    path = write(tmp_path, smtp_doc("good", server, ca_file))
    assert main(["test", "-f", str(path), *argv]) == code
    assert needle in capfd.readouterr().err
    assert server.connections == 0


def test_invalid_input_exits_1_missing_input_2(tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    # Invalid input exits 1 as in validate/plan/apply (it exited 2 here before).
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: smtp.reconciler.dev/v1alpha1\nkind: ExternalSmtp\n"
                   "metadata: {name: x}\nspec: {host: h, port: 0}\n")
    assert main(["test", "-f", str(bad)]) == 1
    err = capfd.readouterr().err
    assert f"{bad}:4:" in err and "spec.port" in err  # file:line and the JSON path
    assert main(["test", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert main(["test"]) == 2  # -f is required
    capfd.readouterr()
    code, env = run_json(capfd, "-f", str(bad))  # -o json: diagnostics in the envelope
    assert code == 1 and env["items"] == []
    [port] = [d for d in env["diagnostics"] if d.get("path") == "spec.port"]
    assert port["line"] == 4 and port["file"] == str(bad)


def test_reads_stdin(tmp_path: Path, relay: Relay, ca_file: Path,
                     capfd: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    server = relay(mode="starttls")
    text = yaml.safe_dump(smtp_doc("piped", server, ca_file))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    # A manifest from stdin has no directory: its CA file needs an explicit root.
    code, data = run_json(capfd, "-f", "-", "--allow-file-root", str(ca_file.parent))
    assert code == 0 and [r["name"] for r in data["results"]] == ["piped"]


def test_send_test_message_opt_in(tmp_path: Path, relay: Relay, ca_file: Path,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    server = relay(mode="starttls")
    path = write(tmp_path, smtp_doc("good", server, ca_file))
    code, _ = run_json(capfd, "-f", str(path), "--send-test-message", OTHER)
    assert code == 0
    assert [m.rcpt_tos for m in server.messages] == [(OTHER,)]


def test_oauth2_relay_with_provider_in_the_same_file(tmp_path: Path, relay: Relay,
                                                     ca_file: Path,
                                                     capfd: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_SECRET", canary.CLIENT_SECRET)
    with OAuthServer(clients=[ClientConfig("smtp-app", secret=canary.CLIENT_SECRET,
                                           subject=USER)],
                     access_token_prefix=canary.ACCESS_TOKEN_PREFIX) as oauth:

        def valid(user: str, token: str) -> bool:
            info = oauth.token_info(token)
            return info is not None and info.live() and info.subject == user

        server = relay(mode="implicit", mechanisms=("XOAUTH2",), token_validator=valid)
        provider = {
            "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
            "metadata": {"name": "idp"},
            "spec": {"grantType": "ClientCredentials", "clientId": "smtp-app",
                     "clientSecretFrom": {"env": "CLIENT_SECRET"},
                     "tokenEndpoint": oauth.token_url},
        }
        doc = smtp_doc("o", server, ca_file, authentication="OAuth2", startTLS=False,
                       oauth2ProviderRef={"name": "idp"},
                       socketFactory={"class": "javax.net.ssl.SSLSocketFactory",
                                      "port": server.port, "fallback": False})
        del doc["spec"]["passwordFrom"]
        code, data = run_json(capfd, "-f", str(write(tmp_path, provider, doc)))
    assert code == 0, data
    [r] = data["results"]
    assert r["passed"]
    assert {"direction": "c", "line": "AUTH XOAUTH2 ******"}.items() <= next(
        t for t in r["transcript"] if t["line"].startswith("AUTH")).items()
