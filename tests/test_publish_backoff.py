"""A refused publication is retried with backoff, not at every pass.

The publisher refuses to publish an OAuth2 access token it cannot obtain, or one that does
not come from the provider configuration the relay's test used.  Before the fix a refused
token past its expiry made :meth:`Publisher.refresh_in` answer 1 s: the relay's worker came
back every second, and every pass of the namespace asked the token endpoint again and
logged the same warning.  Now the namespace is tried again after 5 s, doubling up to 5
minutes, and at once when the fingerprint changes (a new test passed).

In-process: the Secret is written to the strict API emulator through the operator's own
client; the store's cache is the relay and provider bodies the publisher reads; the clock is
injected.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from reconciler.credentials.base import CredentialError, SecretSource
from reconciler.resources import KIND_OAUTH2, KIND_SMTP
from reconciler.runtimes.publish import RETRY_FIRST, RETRY_MAX, Publisher
from reconciler.secret import Secret
from reconciler.stores.base import ObjectRef
from reconciler.stores.kube import KubeStore
from reconciler.stores.kubeapi import Credentials, KubeApi, NotFound, resource_path
from reconciler.stores.kubetypes import KubeObject
from tests.support.kube_emulator import running_emulator

NS = "mail"
SECRET = resource_path("v1", "secrets", NS, "smtp-active-relay")
VERSION = "o:provider-config-1"


class Cache:
    """What the publisher reads from the operator's cache: the relay in use and its
    provider (the reflector fills these in the operator)."""

    def __init__(self) -> None:
        self.relay: KubeObject = {
            "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND_SMTP,
            "metadata": {"name": "oauth", "namespace": NS, "uid": "u-1", "generation": 1},
            "spec": {"host": "smtp.example.test", "port": 587, "authentication": "OAuth2",
                     "oauth2ProviderRef": {"name": "idp"}},
            "status": {"selected": True, "active": {
                "generation": 1, "host": "smtp.example.test", "port": 587,
                "tlsMode": "starttls", "authentication": "OAuth2", "oauth2Provider": "idp",
                "username": "app@example.test", "credentialVersion": VERSION,
                "digest": "sha256:tested", "health": "Healthy",
                "verifiedAt": "2026-12-01T10:00:00Z"}},
        }
        self.provider: KubeObject = {
            "metadata": {"name": "idp", "namespace": NS},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def selected_in(self, kind: str, namespace: str) -> list[KubeObject]:
        return [self.relay] if (kind, namespace) == (KIND_SMTP, NS) else []

    def cached(self, ref: ObjectRef) -> KubeObject | None:
        return self.provider if (ref.kind, ref.name) == (KIND_OAUTH2, "idp") else None


class Tokens:
    """The token function: counts requests; ``fail`` makes the endpoint unavailable."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.issued = 0

    async def __call__(self, ns: str, provider: str) -> tuple[Secret, float | None, str | None]:
        self.calls += 1
        if self.fail:
            raise CredentialError("TokenEndpointUnavailable", "the token endpoint is down")
        self.issued += 1
        return Secret(f"access-token-{self.issued}"), 100.0, VERSION


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
async def api() -> AsyncIterator[KubeApi]:
    root = Path(__file__).resolve().parents[1]
    async with running_emulator(root / "manifests" / "crds", namespaces=[NS]) as (emu, url):
        client = KubeApi(Credentials(server=url, token=emu.admin_token,
                                     ssl_context=emu.client_ssl_context()))
        try:
            yield client
        finally:
            await client.close()


async def _published_token(api: KubeApi) -> str | None:
    try:
        body = await api.get(SECRET)
    except NotFound:
        return None
    data: dict[str, Any] = body.get("data") or {}
    raw = data.get("SMTP_OAUTH2_TOKEN")
    return base64.b64decode(raw).decode() if raw else None


async def test_a_refused_token_is_retried_with_backoff_not_every_second(api: KubeApi) -> None:
    cache, tokens, clock = Cache(), Tokens(), Clock()
    publisher = Publisher(api, cast(KubeStore, cache), cast(SecretSource, None),
                          token_fn=tokens, clock=clock)
    assert await publisher.sync(NS) == "created"
    assert await _published_token(api) == "access-token-1"
    assert publisher.refresh_in(NS) == pytest.approx(75.0)  # 3/4 of its 100 s life

    # The token is due and the endpoint is down: one request, then the backoff.
    clock.now += 80
    tokens.fail = True
    assert await publisher.sync(NS) == "unchanged"
    assert tokens.calls == 2
    assert publisher.refresh_in(NS) == pytest.approx(RETRY_FIRST)  # was 1.0 before the fix
    for _ in range(5):  # other relays' passes in the namespace, within the backoff
        assert await publisher.sync(NS) == "unchanged"
    assert tokens.calls == 2, "the token endpoint was asked again within the backoff"

    # Each refusal of the same fingerprint doubles the wait, up to the cap.
    waits = []
    for _ in range(9):
        clock.now += publisher.refresh_in(NS) or 0
        assert await publisher.sync(NS) == "unchanged"
        waits.append(publisher.refresh_in(NS))
    assert tokens.calls == 11
    assert waits[:3] == [2 * RETRY_FIRST, 4 * RETRY_FIRST, 8 * RETRY_FIRST]
    assert waits[-1] == RETRY_MAX and all(w is not None and w <= RETRY_MAX for w in waits)

    # The endpoint is back: the next try publishes and the backoff is forgotten.
    tokens.fail = False
    clock.now += publisher.refresh_in(NS) or 0
    assert await publisher.sync(NS) == "updated"
    assert await _published_token(api) == "access-token-2"
    assert publisher.refresh_in(NS) == pytest.approx(75.0)


async def test_a_new_tested_configuration_is_tried_at_once_despite_the_backoff(
        api: KubeApi) -> None:
    cache, tokens, clock = Cache(), Tokens(), Clock()
    publisher = Publisher(api, cast(KubeStore, cache), cast(SecretSource, None),
                          token_fn=tokens, clock=clock)
    tokens.fail = True
    assert await publisher.sync(NS) == "unchanged"
    assert await publisher.sync(NS) == "unchanged"
    assert tokens.calls == 1
    # A new test passed (another digest): its fingerprint is new, so it is tried now.
    cache.relay["status"]["active"]["digest"] = "sha256:tested-again"
    tokens.fail = False
    assert await publisher.sync(NS) == "created"
    assert tokens.calls == 2
    assert await _published_token(api) == "access-token-1"
