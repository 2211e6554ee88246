"""``smtpctl oauth token|revoke|login`` against the loopback token endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.oauth import OAuthServer
from tests.support import canary
from tests.support.oauth_server import GMAIL_SCOPE, M365_SCOPE, make_server
from tests.support.oauth_server import oauth_server as oauth_server

ROOT = Path(__file__).resolve().parent.parent


def manifest(tmp_path: Path, spec: dict[str, Any], name: str = "prov") -> Path:
    doc = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
           "metadata": {"name": name, "namespace": "mail"}, "spec": spec}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPCTL_TEST_CS", canary.CLIENT_SECRET)
    monkeypatch.setenv("SMTPCTL_TEST_RT", canary.REFRESH_TOKEN)
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "SMTPCTL_TEST_*")  # the CLI's opt-in
    monkeypatch.delenv("KUBECONFIG", raising=False)


def m365(server: OAuthServer, **extra: Any) -> dict[str, Any]:
    return {"grantType": "ClientCredentials", "clientId": "m365-app",
            "clientSecretFrom": {"env": "SMTPCTL_TEST_CS"}, "tokenEndpoint": server.token_url,
            "scopes": [M365_SCOPE], **extra}


def test_token_ok_never_prints_the_token(oauth_server: OAuthServer, tmp_path: Path, env: None,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    f = manifest(tmp_path, m365(oauth_server, testEndpoint=oauth_server.test_url))
    assert main(["oauth", "token", "prov", "-f", str(f)]) == 0
    out, err = capfd.readouterr()
    assert "access token was obtained" in out and "test endpoint accepted" in out
    canary.assert_no_canary(out, err)
    assert oauth_server.issued_access_tokens() == 1


def test_token_failure_exit_1_with_reason(oauth_server: OAuthServer, tmp_path: Path, env: None,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    f = manifest(tmp_path, m365(oauth_server, scopes=["https://graph.microsoft.com/.default"]))
    assert main(["oauth", "token", "prov", "-f", str(f)]) == 1
    _, err = capfd.readouterr()
    assert "OAuth2InvalidScope" in err and "mail/prov" in err


def test_token_unknown_provider_and_bad_input(tmp_path: Path, env: None,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    with make_server() as server:
        f = manifest(tmp_path, m365(server))
        # a provider that is not in the input is NotFound (1), as in get/describe/delete
        assert main(["oauth", "token", "other", "-f", str(f)]) == 1
        # the namespace rule of every command: -n elsewhere says where it is
        assert main(["oauth", "token", "prov", "-f", str(f), "-n", "elsewhere"]) == 1
        assert main(["oauth", "token", "prov", "-f", str(tmp_path / "missing.yaml")]) == 2
        bad = manifest(tmp_path, {**m365(server), "clientSecret": canary.CLIENT_SECRET},
                       name="bad")
        assert main(["oauth", "token", "bad", "-f", str(bad)]) == 1
    _, err = capfd.readouterr()
    assert "OAuth2Provider 'other' not found in any namespace" in err
    assert "not found in namespace elsewhere; it exists in namespace mail (use -n mail)" in err
    assert "literal secrets are not allowed" in err
    canary.assert_no_canary(err)


def test_token_secret_key_ref_without_cluster(oauth_server: OAuthServer, tmp_path: Path,
                                              env: None, monkeypatch: pytest.MonkeyPatch,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    f = manifest(tmp_path, m365(oauth_server, clientSecretFrom={
        "secretKeyRef": {"name": "m365", "key": "client_secret"}}))
    assert main(["oauth", "token", "prov", "-f", str(f)]) == 1
    _, err = capfd.readouterr()
    assert "KubernetesUnavailable" in err


def test_revoke_refresh_token(oauth_server: OAuthServer, tmp_path: Path, env: None,
                              capfd: pytest.CaptureFixture[str]) -> None:
    spec = {"grantType": "RefreshToken", "clientId": "gmail-app",
            "clientSecretFrom": {"env": "SMTPCTL_TEST_CS"},
            "refreshTokenFrom": {"env": "SMTPCTL_TEST_RT"},
            "tokenEndpoint": oauth_server.token_url, "revokeEndpoint": oauth_server.revoke_url,
            "scopes": [GMAIL_SCOPE]}
    f = manifest(tmp_path, spec)
    assert canary.REFRESH_TOKEN in oauth_server.refresh_tokens()
    assert main(["oauth", "revoke", "prov", "-f", str(f)]) == 0
    assert canary.REFRESH_TOKEN not in oauth_server.refresh_tokens()
    # The revoked token no longer works: the provider says invalid_grant.
    assert main(["oauth", "token", "prov", "-f", str(f)]) == 1
    out, err = capfd.readouterr()
    assert "revoked the refresh token" in out and "OAuth2InvalidGrant" in err
    canary.assert_no_canary(out, err)


def test_revoke_client_credentials_access_token(oauth_server: OAuthServer, tmp_path: Path,
                                                env: None) -> None:
    f = manifest(tmp_path, m365(oauth_server, revokeEndpoint=oauth_server.revoke_url))
    assert main(["oauth", "revoke", "prov", "-f", str(f)]) == 0
    assert oauth_server.issued_access_tokens() == 0  # the one it fetched was revoked


def test_revoke_without_endpoint(oauth_server: OAuthServer, tmp_path: Path, env: None,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    f = manifest(tmp_path, m365(oauth_server))
    assert main(["oauth", "revoke", "prov", "-f", str(f)]) == 1
    assert "revokeEndpoint" in capfd.readouterr().err


def test_usage_errors(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["oauth"]) == 2
    assert main(["oauth", "login", "p", "-f", "x.yaml", "--auth-param", "novalue"]) == 2


def test_login_refuses_read_only_target_before_starting(
    oauth_server: OAuthServer, tmp_path: Path, env: None, capfd: pytest.CaptureFixture[str]
) -> None:
    spec = {"grantType": "AuthorizationCode", "clientId": "cli-app",
            "authorizationEndpoint": oauth_server.authorize_url,
            "tokenEndpoint": oauth_server.token_url,
            "refreshTokenFrom": {"env": "SMTPCTL_TEST_RT"}}
    f = manifest(tmp_path, spec)
    assert main(["oauth", "login", "prov", "-f", str(f), "--no-browser"]) == 2
    assert "cannot be written" in capfd.readouterr().err
    assert not any(path == "/authorize" for path, _ in oauth_server.requests)


def _login_cli(server: OAuthServer, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    """Run `smtpctl oauth login` as a process and play the browser for it."""
    spec = {"grantType": "AuthorizationCode", "clientId": "cli-app",
            "authorizationEndpoint": server.authorize_url, "tokenEndpoint": server.token_url,
            "refreshTokenFrom": {"file": str(tmp_path / "rt")},
            "scopes": [GMAIL_SCOPE, "offline_access"]}
    f = manifest(tmp_path, spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPCTL_TEST")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "oauth", "login", "prov", "-f", str(f),
         "--no-browser", "--timeout", "20", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stderr is not None
        url = ""
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("http://"):
                url = line.strip()
                break
        assert url, "".join(lines)
        with httpx.Client(timeout=10, follow_redirects=True) as http:
            assert http.get(url).status_code == 200
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, "".join(lines) + err


def test_login_cli_writes_file_and_prints_nothing_secret(tmp_path: Path) -> None:
    with make_server() as server:
        code, out, err = _login_cli(server, tmp_path)
        assert code == 0, err
        stored = (tmp_path / "rt").read_text().strip()
        assert stored in server.refresh_tokens()
    assert out == ""
    assert "refresh token written to file" in err
    canary.assert_no_canary(out, err)  # the issued refresh token is a canary


def test_login_cli_print_refresh_token(tmp_path: Path) -> None:
    # Plain (non-canary) tokens here: printing is what the user asked for.
    with make_server(token_factory=None) as server:
        code, out, err = _login_cli(server, tmp_path, "--print-refresh-token")
        assert code == 0, err
        assert out.strip() == (tmp_path / "rt").read_text().strip()
        assert out.strip() in server.refresh_tokens()
