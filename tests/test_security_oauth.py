"""Bounded OAuth 2.0 exchanges against hostile endpoints (issue 9, high and medium).

Real sockets on loopback (tests/support/hostile_http.py): an endpoint that drips one byte
at a time, one that floods 300 MB, one that redirects, a proxy that records what crosses
it.  Each test here failed before: ``apply``/``test`` hung on the drip for minutes, the
flood drove ``smtpctl test`` to about 1 GB RSS, token and test endpoints bypassed the egress
guard, and an ``http://127.0.0.2`` endpoint went through ``HTTP_PROXY`` in clear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from reconciler.credentials.base import CredentialError
from reconciler.credentials.http import MAX_BODY
from reconciler.credentials.oauth import TokenManager, check_provider, revoke
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.probe.egress import EgressPolicy
from reconciler.resources import OAuth2Provider
from tests.support import canary
from tests.support.hostile_http import HostileHttp, RecordingProxy

ROOT = Path(__file__).resolve().parent.parent
API = "smtp.reconciler.dev/v1alpha1"
ENV = {"CS": canary.CLIENT_SECRET}


def provider(token_url: str, **spec: Any) -> OAuth2Provider:
    body = {"grantType": "ClientCredentials", "clientId": "app",
            "clientSecretFrom": {"env": "CS"}, "tokenEndpoint": token_url, **spec}
    return OAuth2Provider.model_validate({"apiVersion": API, "kind": "OAuth2Provider",
                                          "metadata": {"name": "idp", "namespace": "t"},
                                          "spec": body})


def manager(**kwargs: Any) -> TokenManager:
    kwargs.setdefault("retry_initial_seconds", 0.01)
    kwargs.setdefault("retry_max_seconds", 0.02)
    return TokenManager(SourceRouter(env=EnvSource(ENV)), **kwargs)


def wait_until(what: str, fn: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if fn():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def failure(coro: Any) -> CredentialError:
    with pytest.raises(CredentialError) as exc:
        await coro
    canary.assert_no_canary(exc.value.message, where="error")
    return exc.value


# --- time ------------------------------------------------------------------------------------


async def test_a_dripping_token_endpoint_is_cut_off_at_the_deadline() -> None:
    with HostileHttp("drip", interval=0.2) as drip:
        err = await failure(manager(timeout_seconds=10).token(provider(drip.url), deadline=1))
        assert err.reason == "OAuth2TokenEndpointUnavailable"
        assert "within 1s" in err.message
        # The client hung up long before the 4 KB body was complete.
        wait_until("the endpoint to notice the hang-up", lambda: drip.closed_early >= 1)
        assert drip.bytes_sent[0] < len(drip.drip_body)


def relay_and_provider(tmp_path: Path, token_url: str, timeout: int) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": API, "kind": "OAuth2Provider", "metadata": {"name": "idp"},
         "spec": {"grantType": "ClientCredentials", "clientId": "app",
                  "clientSecretFrom": {"env": "CS"}, "tokenEndpoint": token_url}},
        {"apiVersion": API, "kind": "ExternalSmtp", "metadata": {"name": "mail"},
         "spec": {"host": "127.0.0.1", "port": 9, "startTLS": True, "authentication": "OAuth2",
                  "username": "u@example.test", "oauth2ProviderRef": {"name": "idp"},
                  "connectionTest": {"timeoutSeconds": timeout}}}]))
    return manifest


def smtpctl(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, CS=canary.CLIENT_SECRET, SMTPCTL_ALLOW_ENV="CS",
               PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "reconciler", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def test_smtpctl_test_against_a_dripping_endpoint_ends_within_its_timeout(tmp_path: Path
                                                                        ) -> None:
    """`smtpctl test` hung despite `timeoutSeconds: 5` (the drip restarted every read
    timeout).  The exchange is bounded by the relay's timeout; the process returns with the
    reason, and the endpoint saw the client hang up (a hang would fail the 60 s bound of
    communicate(), far beyond the 800 s the drip would take)."""
    with HostileHttp("drip", interval=0.2) as drip:
        proc = smtpctl(tmp_path, "test", "-f", str(relay_and_provider(tmp_path, drip.url, 3)),
                       "-o", "json")
        out, err = proc.communicate(timeout=60)
        canary.assert_no_canary(out, err, where="smtpctl test output")
        assert proc.returncode == 1, err
        (item,) = json.loads(out)["items"]
        assert item["reason"] == "OAuth2ProviderNotReady"
        assert "OAuth2TokenEndpointUnavailable" in item["message"]
        assert "within 3s" in item["message"]
        wait_until("the endpoint to notice the hang-up", lambda: drip.closed_early >= 1)


# --- bytes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["flood", "flood-declared"])
async def test_a_flooding_token_endpoint_is_read_no_further_than_the_cap(mode: str) -> None:
    with HostileHttp(mode, flood_bytes=64 * 1024 * 1024) as flood:  # type: ignore[arg-type]
        err = await failure(manager(timeout_seconds=10, attempts=3).token(provider(flood.url)))
        assert err.reason == "OAuth2TokenEndpointError"
        assert f"more than {MAX_BODY // 1024} KiB" in err.message
        assert flood.connections == 1  # not retried: a flood is not transient


_MEASURED = """
import sys
from reconciler.cli.main import main
code = main(sys.argv[2:])
with open("/proc/self/status") as fh, open(sys.argv[1], "w") as out:
    out.write(next(line for line in fh if line.startswith("VmHWM:")))
sys.exit(code)
"""


def test_a_300_mb_token_response_stays_under_150_mb_rss(tmp_path: Path) -> None:
    """A 300 MB token response drove `smtpctl test` to about 1 GB RSS (745 MiB here).  The
    measurement is the child's own peak RSS, VmHWM of its address space (a memory bound,
    not a timer; ru_maxrss from wait4 would include the forking test worker's size)."""
    report = tmp_path / "vmhwm"
    with HostileHttp("flood", flood_bytes=300 * 1024 * 1024) as flood:
        manifest = relay_and_provider(tmp_path, flood.url, 20)
        env = dict(os.environ, CS=canary.CLIENT_SECRET, SMTPCTL_ALLOW_ENV="CS",
                   PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-c", _MEASURED, str(report), "test", "-f",
                               str(manifest), "-o", "json"], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120, check=False)
    peak_mib = int(report.read_text().split()[1]) / 1024  # "VmHWM:  70000 kB"
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
    canary.assert_no_canary(done.stdout, done.stderr, where="smtpctl test output")
    assert done.returncode == 1, done.stderr
    (item,) = json.loads(done.stdout)["items"]
    assert "more than" in item["message"], item["message"]


# --- where credentials may go ---------------------------------------------------------------


def oauth_server(host: str = "127.0.0.1", **kwargs: Any) -> OAuthServer:
    return OAuthServer(clients=[ClientConfig("app", canary.CLIENT_SECRET)], host=host,
                       token_factory=lambda p: canary.ACCESS_TOKEN_PREFIX + os.urandom(4).hex(),
                       **kwargs)


async def test_redirects_are_not_followed_to_another_host() -> None:
    with oauth_server(host="127.0.0.2") as other, HostileHttp(
            "redirect", location=other.token_url) as redirecting:
        err = await failure(manager(timeout_seconds=5).token(provider(redirecting.url)))
        assert err.reason == "OAuth2TokenEndpointError"
        assert "redirect" in err.message and "'127.0.0.2'" in err.message
        assert other.requests == []


async def test_token_test_and_revoke_endpoints_go_through_the_egress_guard() -> None:
    """The operator POSTed credentials to loopback without --allow-loopback: the token,
    test and revoke endpoints bypassed the guard the SMTP probe applies."""
    with oauth_server() as idp, HostileHttp("echo", host="127.0.0.2") as elsewhere:
        closed = EgressPolicy(allow_loopback=False)
        for url in (idp.token_url, idp.token_url.replace("127.0.0.1", "localhost")):
            err = await failure(manager(egress=closed).token(provider(url)))
            assert err.reason == "EgressDenied", err.message
            assert "loopback" in err.message
        assert idp.requests == []
        # The token endpoint is allowed (127.0.0.1/32); the test and revoke endpoints on
        # 127.0.0.2 are not.
        only_idp = EgressPolicy.from_strings(allow_loopback=False, allow=["127.0.0.1/32"])
        p = provider(idp.token_url, testEndpoint=elsewhere.url.replace("/token", "/test"),
                     revokeEndpoint=elsewhere.url.replace("/token", "/revoke"))
        tokens = manager(egress=only_idp)
        check = await check_provider(p, tokens)
        assert (check.ready, check.reason) == (False, "EgressDenied"), check.message
        err = await failure(revoke(p, tokens._sources, tokens))
        assert err.reason == "EgressDenied"
        assert elsewhere.connections == 0


async def test_http_endpoints_never_go_through_a_proxy(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """An http://127.0.0.2 endpoint went through HTTP_PROXY with the Basic credentials in
    clear (only 127.0.0.1, localhost and ::1 bypassed the proxy)."""
    with RecordingProxy() as proxy, oauth_server(host="127.0.0.2") as idp:
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(var, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        token = await manager(timeout_seconds=5).token(provider(idp.token_url))
        assert idp.is_valid(token.reveal())
        assert proxy.connections == 0 and bytes(proxy.received) == b""


async def test_https_through_a_proxy_is_tunnelled_end_to_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a proxy, only CONNECT and TLS records cross it: never a credential."""
    ca = trustme.CA()
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert("idp.example.test").configure_cert(server_ctx)
    client_ctx = __import__("ssl").create_default_context()
    ca.configure_trust(client_ctx)
    with oauth_server(ssl_context=server_ctx) as idp, RecordingProxy(
            upstream=("127.0.0.1", idp.port)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        url = f"https://idp.example.test:{idp.port}/token"
        token = await manager(timeout_seconds=5, verify=client_ctx).token(provider(url))
        assert idp.is_valid(token.reveal())
        assert proxy.connects == [f"CONNECT idp.example.test:{idp.port} HTTP/1.1".encode()]
        canary.assert_no_canary(bytes(proxy.received), where="bytes the proxy saw")
        assert b"client_credentials" not in proxy.received
