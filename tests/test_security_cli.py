"""The CLI on an untrusted manifest (issue 9, high findings), end to end: ``smtpctl`` in
process, an attacker's relay and token endpoint on loopback.

The attacker's relay accepts exactly the planted canary as the password: had smtpctl sent
it, the test would *pass*.  Each scenario below passed (the canary left the machine) before
the source policy existed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer
from tests.support import canary

API = "smtp.reconciler.dev/v1alpha1"
USER = "victim@example.test"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    canary.assert_no_canary(out.getvalue(), err.getvalue(), where="smtpctl output")
    return code, out.getvalue(), err.getvalue()


def secret_file(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def relay_doc(name: str, port: int, ca: Path, password_from: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ExternalSmtp", "metadata": {"name": name},
            "spec": {"host": "127.0.0.1", "port": port, "startTLS": True,
                     "authentication": "UsernamePassword", "username": USER,
                     "passwordFrom": password_from, "tls": {"caBundleFrom": {"file": str(ca)}},
                     "connectionTest": {"timeoutSeconds": 5, "checkRelay": False}}}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pull request's checkout; the runner's home and environment hold real secrets."""
    for var in ("SMTPCTL_ALLOW_ENV", "SMTPCTL_ALLOW_FILE_ROOT", "SMTPCTL_ALLOW_NAMESPACE",
                "KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["home-dotfile", "git-config", "symlink-out", "env"])
def test_untrusted_manifest_cannot_send_local_secrets_to_its_relay(
        where: str, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stolen = canary.canary(f"stolen-{where}")
    home = repo.parent / "home"
    with RelayServer(mode="starttls", users={USER: stolen}) as attacker:
        ca = repo / "ca.pem"
        ca.write_text(attacker.ca_pem)
        ref: dict[str, Any]
        if where == "home-dotfile":
            ref = {"file": str(secret_file(home / ".git-credentials", stolen))}
        elif where == "git-config":  # actions/checkout persists the token here
            secret_file(repo / ".git" / "config", stolen)
            ref = {"file": ".git/config"}
            monkeypatch.chdir(repo)
        elif where == "symlink-out":
            (repo / "password").symlink_to(secret_file(home / ".netrc", stolen))
            ref = {"file": str(repo / "password")}
        else:
            monkeypatch.setenv("CI_DEPLOY_TOKEN", stolen)
            ref = {"env": "CI_DEPLOY_TOKEN"}
        manifest = repo / "relay.yaml"
        manifest.write_text(yaml.safe_dump(relay_doc("pr", attacker.port, ca, ref)))
        code, out, _ = run("test", "-f", str(manifest), "-o", "json")
        assert code == 1
        (result,) = json.loads(out)["items"]
        assert (result["passed"], result["stage"], result["reason"]) == (
            False, "credentials", "SecretReferenceNotAllowed")
        flag = "--allow-env CI_DEPLOY_TOKEN" if where == "env" else "--allow-file-root"
        assert flag in result["message"]
        assert attacker.connections == 0 and attacker.auth_attempts == []


def test_explicit_opt_in_reads_what_it_names(repo: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """The positive control: the same scenario with the opt-in reaches the relay."""
    monkeypatch.setenv("SMTP_PASSWORD", canary.PASSWORD)
    with RelayServer(mode="starttls", users={USER: canary.PASSWORD}) as relay:
        ca = repo / "ca.pem"
        ca.write_text(relay.ca_pem)
        manifest = repo / "relay.yaml"
        manifest.write_text(yaml.safe_dump(relay_doc("ok", relay.port, ca,
                                                     {"env": "SMTP_PASSWORD"})))
        code, _, _ = run("test", "-f", str(manifest), "--allow-env", "SMTP_*")
        assert code == 0
        monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "SMTP_PASSWORD")  # the environment form
        code, _, _ = run("test", "-f", str(manifest))
        assert code == 0
        assert [a.success for a in relay.auth_attempts] == [True, True]


# --- OAuth: no request, no write-back where it may not -----------------------------------------


@pytest.fixture
def idp() -> Iterator[OAuthServer]:
    server = OAuthServer(
        clients=[ClientConfig("app", canary.CLIENT_SECRET, subject=USER,
                              grants=("refresh_token", "client_credentials"))],
        rotate_refresh_tokens=True, login_subject=USER,
        token_factory=lambda prefix: (canary.ACCESS_TOKEN_PREFIX + os.urandom(6).hex()
                                      if prefix == "at-" else canary.canary("rotated")))
    server.add_refresh_token(canary.REFRESH_TOKEN, "app", subject=USER)
    with server:
        yield server


def provider_doc(server: OAuthServer, refresh_from: dict[str, Any],
                 secret_from: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "OAuth2Provider", "metadata": {"name": "idp"},
            "spec": {"grantType": "RefreshToken", "clientId": "app",
                     "clientSecretFrom": secret_from, "refreshTokenFrom": refresh_from,
                     "tokenEndpoint": server.token_url}}


def oauth_relay_doc(port: int, ca: Path) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ExternalSmtp", "metadata": {"name": "mail"},
            "spec": {"host": "127.0.0.1", "port": port, "startTLS": True,
                     "authentication": "OAuth2", "username": USER,
                     "oauth2ProviderRef": {"name": "idp"}, "selected": True,
                     "tls": {"caBundleFrom": {"file": str(ca)}},
                     "connectionTest": {"timeoutSeconds": 5, "checkRelay": False}}}


def test_client_secret_from_the_environment_is_not_posted_without_opt_in(
        repo: Path, idp: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_SECRET", canary.CLIENT_SECRET)
    secret_file(repo / "rt", canary.REFRESH_TOKEN)
    with RelayServer(mode="starttls", users={}) as relay:
        (repo / "ca.pem").write_text(relay.ca_pem)
        manifest = repo / "all.yaml"
        manifest.write_text(yaml.safe_dump_all([
            provider_doc(idp, {"file": "rt"}, {"env": "CLIENT_SECRET"}),
            oauth_relay_doc(relay.port, repo / "ca.pem")]))
        monkeypatch.chdir(repo)
        code, out, _ = run("test", "-f", str(manifest), "-o", "json")
        assert code == 1
        (result,) = json.loads(out)["items"]
        assert result["reason"] == "OAuth2ProviderNotReady"
        assert "SecretReferenceNotAllowed" in result["message"]
        assert "--allow-env CLIENT_SECRET" in result["message"]
        assert idp.requests == [] and relay.connections == 0


@pytest.fixture
def oauth_env(repo: Path, idp: OAuthServer, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[tuple[Path, Path, RelayServer]]:
    """A provider with a refresh token file beside the manifest and a relay that accepts the
    endpoint's tokens; the client secret variable is allowed."""
    monkeypatch.setenv("CLIENT_SECRET", canary.CLIENT_SECRET)
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "CLIENT_SECRET")
    rt = secret_file(repo / "secrets" / "refresh-token", canary.REFRESH_TOKEN)
    relay = RelayServer(mode="starttls", users={})
    relay.token_validator = lambda user, token: idp.is_valid(token)
    with relay:
        (repo / "ca.pem").write_text(relay.ca_pem)
        manifest = repo / "all.yaml"
        manifest.write_text(yaml.safe_dump_all([
            provider_doc(idp, {"file": str(rt)}, {"env": "CLIENT_SECRET"}),
            oauth_relay_doc(relay.port, repo / "ca.pem")]))
        yield manifest, rt, relay


def test_test_writes_a_rotated_token_back_to_the_reference_it_read_and_says_so(
        oauth_env: tuple[Path, Path, RelayServer], idp: OAuthServer) -> None:
    manifest, rt, _ = oauth_env
    code, _, err = run("test", "-f", str(manifest))
    assert code == 0, err
    rotated = rt.read_text().strip()
    assert rotated != canary.REFRESH_TOKEN and rotated in idp.refresh_tokens()
    assert f"written to file {rt}, the reference it was read from" in err


def test_test_never_writes_a_rotated_token_outside_what_it_may_read(
        repo: Path, idp: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """`smtpctl test` overwrote a dotfile in the home directory: now the reference is refused
    before anything is requested, so there is nothing to write."""
    dotfile = secret_file(repo.parent / "home" / ".profile", canary.REFRESH_TOKEN)
    monkeypatch.setenv("CLIENT_SECRET", canary.CLIENT_SECRET)
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "CLIENT_SECRET")
    with RelayServer(mode="starttls", users={}) as relay:
        (repo / "ca.pem").write_text(relay.ca_pem)
        manifest = repo / "all.yaml"
        manifest.write_text(yaml.safe_dump_all([
            provider_doc(idp, {"file": str(dotfile)}, {"env": "CLIENT_SECRET"}),
            oauth_relay_doc(relay.port, repo / "ca.pem")]))
        code, _, _ = run("test", "-f", str(manifest))
    assert code == 1
    assert dotfile.read_text() == canary.REFRESH_TOKEN + "\n" and idp.requests == []


def test_checks_contact_no_endpoint_and_write_nothing(
        oauth_env: tuple[Path, Path, RelayServer], idp: OAuthServer, tmp_path: Path) -> None:
    """`plan` and `apply --dry-run` redeemed refresh tokens and wrote rotated ones back.
    After one real apply, plan / apply --dry-run / get / describe / validate contact neither
    the token endpoint nor the relay, and leave the refresh token file as it is."""
    manifest, rt, relay = oauth_env
    state = str(tmp_path / "state")
    code, _, err = run("apply", "-f", str(manifest), "--state", state)
    assert code == 0, err
    requests, connections = list(idp.requests), relay.connections
    before = (rt.read_bytes(), rt.stat().st_mtime_ns)
    for argv in (["plan", "-f", str(manifest), "--state", state],
                 ["apply", "--dry-run", "-f", str(manifest), "--state", state],
                 ["get", "all", "--state", state],
                 ["get", "active", "-o", "env", "--state", state],
                 ["describe", "externalsmtp", "mail", "--state", state],
                 ["validate", "-f", str(manifest)]):
        code, _, err = run(*argv)
        assert code in (0, 3), (argv, err)
    code, _, err = run("get", "active", "-o", "env", "--reveal", "--state", state)
    assert code == 1 and "never contacts a token endpoint" in err
    assert idp.requests == requests and relay.connections == connections
    assert (rt.read_bytes(), rt.stat().st_mtime_ns) == before
