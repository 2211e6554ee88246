"""The engine's side-effecting functions wired to the real layers below it.

The engine (``reconciler.engine``) receives resolution, the probe and the provider check
as plain functions in a :class:`~reconciler.engine.world.World`; it never imports the
SMTP or OAuth stacks.  This module is where a runtime gets the real ones: the local CLI
and the operator differ only in the secret ``sources`` and the egress policy they pass.
Tests wire functions of their own, or these against loopback servers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.engine.world import (
    CheckProviderFn,
    Credentials,
    ProbeFn,
    ProviderHealth,
    ResolveFn,
)
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider

if TYPE_CHECKING:
    from reconciler.credentials.base import SecretSource
    from reconciler.credentials.oauth import TokenManager
    from reconciler.probe.egress import EgressPolicy


@dataclass(frozen=True, slots=True)
class LiveFunctions:
    """The engine's three side-effecting functions, wired to the real layers below."""

    resolve_fn: ResolveFn
    probe_fn: ProbeFn
    check_provider_fn: CheckProviderFn
    token_manager: Callable[[], TokenManager]

    @property
    def tokens(self) -> TokenManager:
        """The OAuth 2.0 token manager (created, and its HTTP stack imported, on first use)."""
        return self.token_manager()


def live_functions(sources: SecretSource, *, allow_loopback: bool = True,
                   egress: EgressPolicy | None = None, offline: bool = False) -> LiveFunctions:
    """Credentials resolution, the SMTP probe and the provider check as every runtime uses
    them.  The SMTP and OAuth stacks are imported here, when a runtime starts, not when
    the engine is imported.

    ``egress`` (default: loopback as ``allow_loopback`` says, the default deny list) guards
    the SMTP probe *and* every OAuth endpoint.  ``offline`` (``plan``, ``apply --dry-run``):
    secrets are resolved for their versions, but no token endpoint or relay is contacted
    and nothing is written (the probe and the provider check refuse to run)."""
    from reconciler.credentials.resolve import resolve_smtp_credentials
    from reconciler.probe import run_probe
    from reconciler.probe.egress import EgressPolicy as _EgressPolicy

    policy = egress if egress is not None else _EgressPolicy(allow_loopback=allow_loopback)
    made: list[TokenManager] = []

    def tokens() -> TokenManager:
        # The OAuth stack (httpx, authlib: a fifth of a second to import) only when a
        # resource needs a token: a fleet of password relays never does.
        if not made:
            from reconciler.credentials.oauth import TokenManager as _TokenManager

            made.append(_TokenManager(sources, egress=policy, offline=offline))
        return made[0]

    async def resolve_fn(res: ExternalSmtp, provider: OAuth2Provider | None) -> Credentials:
        providers = {provider.metadata.name: provider} if provider is not None else {}
        return await resolve_smtp_credentials(
            res, providers=providers, sources=sources,
            tokens=tokens() if res.spec.authentication == "OAuth2" else None)

    async def probe_fn(spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        if offline:
            raise RuntimeError("an offline world never runs a connection test")
        return await run_probe(spec, creds, policy=policy)

    async def check_fn(provider: OAuth2Provider) -> ProviderHealth:
        if offline:
            raise RuntimeError("an offline world never contacts a token endpoint")
        from reconciler.credentials.oauth import check_provider

        return await check_provider(provider, tokens())

    return LiveFunctions(resolve_fn, probe_fn, check_fn, tokens)
