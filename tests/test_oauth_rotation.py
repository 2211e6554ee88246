"""Refresh-token rotation: write-back to file / Kubernetes Secret, or memory + warning."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import httpx

from reconciler.credentials.oauth import TokenManager, check_provider
from reconciler.credentials.policy import SourcePolicy
from reconciler.credentials.sources import EnvSource, SourceRouter, default_sources
from reconciler.devservers.oauth import OAuthServer
from tests.support import canary
from tests.support.kube_emulator import running_emulator
from tests.support.oauth_server import make_server, provider

ENV = {"SMTPCTL_TEST_CS": canary.CLIENT_SECRET, "SMTPCTL_TEST_RT": canary.REFRESH_TOKEN}


def rotating() -> OAuthServer:
    return make_server(rotate_refresh_tokens=True)


async def test_rotation_written_back_to_file(tmp_path: Path) -> None:
    rt_file = tmp_path / "rt"
    rt_file.write_text(canary.REFRESH_TOKEN + "\n")
    rt_file.chmod(0o600)
    with rotating() as server:
        p = provider(server, grant="RefreshToken", refresh_token_from={"file": str(rt_file)})
        tm = TokenManager(SourceRouter(env=EnvSource(ENV)))
        first = await tm.token(p)
        assert server.is_valid(first.reveal())
        stored = rt_file.read_text().strip()
        assert stored != canary.REFRESH_TOKEN
        assert stored in server.refresh_tokens()
        assert canary.REFRESH_TOKEN not in server.refresh_tokens()  # the old one died
        assert stat.S_IMODE(os.stat(rt_file).st_mode) == 0o600
        assert tm.warnings == {}
        v1 = tm.provider_version(p)
        # The token is cached although the file changed (we changed it ourselves)...
        assert await tm.token(p) == first
        assert tm.requests == 1
        # ...and our own rotation does not look like a user change to the engine digest.
        second = await tm.token(p, force_refresh=True)
        assert second != first and tm.requests == 2
        assert tm.provider_version(p) == v1
        # A new process (fresh manager) starts from the persisted token.
        again = await TokenManager(SourceRouter(env=EnvSource(ENV))).token(p)
        assert server.is_valid(again.reveal())


async def test_rotation_with_read_only_source_keeps_memory_and_warns() -> None:
    with rotating() as server:
        p = provider(server, grant="RefreshToken")  # refresh token from env: read-only
        tm = TokenManager(SourceRouter(env=EnvSource(ENV)))
        await tm.token(p)
        assert tm.warnings == {"default/oauth": ("RefreshTokenNotPersisted",)}
        # The rotated token (only in memory) keeps working; the env one is dead.
        assert canary.REFRESH_TOKEN not in server.refresh_tokens()
        fresh = await tm.token(p, force_refresh=True)
        assert server.is_valid(fresh.reveal())
        check = await check_provider(p, tm)
        assert check.ready and check.warnings == ("RefreshTokenNotPersisted",)
        assert "next restart will fail" in check.message
        canary.assert_no_canary(repr(check), check.message)


async def test_user_update_of_read_only_source_wins_over_memory() -> None:
    env = dict(ENV)
    with rotating() as server:
        p = provider(server, grant="RefreshToken")
        tm = TokenManager(SourceRouter(env=EnvSource(env)))
        await tm.token(p)
        new_rt = canary.canary("user-rt")
        server.add_refresh_token(new_rt, "gmail-app")
        env["SMTPCTL_TEST_RT"] = new_rt
        await tm.token(p)
        # The user's token was used (and rotated away) and the warning was re-raised for it.
        assert new_rt not in server.refresh_tokens()
        assert tm.warnings == {"default/oauth": ("RefreshTokenNotPersisted",)}


async def test_rotation_written_back_to_kubernetes_secret(tmp_path: Path) -> None:
    async with running_emulator(namespaces=("mail",)) as (emu, url):
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(emu.kubeconfig(url))
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gmail"},
                "data": {"refresh_token": base64.b64encode(canary.REFRESH_TOKEN.encode()).decode(),
                         "client_secret": base64.b64encode(canary.CLIENT_SECRET.encode()).decode()}}
        async with httpx.AsyncClient(**emu.http_kwargs()) as c:
            r = await c.post(f"{url}/api/v1/namespaces/mail/secrets", json=body)
            assert r.status_code == 201
        with rotating() as server:
            p = provider(server, grant="RefreshToken", namespace="mail",
                         client_secret_from={"secretKeyRef": {"name": "gmail",
                                                              "key": "client_secret"}},
                         refresh_token_from={"secretKeyRef": {"name": "gmail",
                                                              "key": "refresh_token"}})
            tm = TokenManager(default_sources(policy=SourcePolicy.open(), kubeconfig=str(cfg)))
            await tm.token(p)
            assert tm.warnings == {}
            async with httpx.AsyncClient(**emu.http_kwargs()) as c:
                r = await c.get(f"{url}/api/v1/namespaces/mail/secrets/gmail")
            stored = base64.b64decode(r.json()["data"]["refresh_token"]).decode()
            assert stored in server.refresh_tokens()
            assert stored != canary.REFRESH_TOKEN
            await tm.token(p)
            assert tm.requests == 1  # our own patch did not invalidate the cache
