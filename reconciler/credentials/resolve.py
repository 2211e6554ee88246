"""Turn an ExternalSmtp's references into what the probe needs (ProbeCredentials).

The engine calls :func:`resolve_smtp_credentials` before every test.  The result carries
the secrets (in :class:`~reconciler.secret.Secret`) and their *versions*, which the engine
puts into the resource's digest: a rotated password or provider secret changes the digest
and so causes a new test, without the secret itself ever being stored.

For OAuth2 a token is obtained *here*, once, so that a provider that cannot give one turns
into ``OAuth2ProviderNotReady`` (the resource waits for its provider) rather than into an
opaque AUTH failure at the SMTP server.  The probe then gets a ``token_provider`` that
returns the cached token, or a fresh one when it asks with ``force_refresh=True`` after the
server rejected the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.credentials.base import CredentialError, SecretSource
from reconciler.probe.verdict import ProbeCredentials
from reconciler.resources import ExternalSmtp, OAuth2Provider
from reconciler.secret import Secret

if TYPE_CHECKING:
    from reconciler.credentials.oauth import TokenManager

__all__ = ["SmtpCredentials", "resolve_smtp_credentials"]


@dataclass(frozen=True)
class SmtpCredentials:
    probe: ProbeCredentials
    # reference description -> version, e.g. {"passwordFrom": "env:h:..", "oauth2:NAME": "o:.."}
    versions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # e.g. RefreshTokenNotPersisted of the provider


async def resolve_smtp_credentials(
    resource: ExternalSmtp,
    *,
    providers: Mapping[str, OAuth2Provider],
    sources: SecretSource,
    tokens: TokenManager | None = None,
) -> SmtpCredentials:
    """Resolve passwordFrom / oauth2ProviderRef / tls.caBundleFrom of ``resource``.

    ``providers`` maps provider names (in the resource's namespace) to resources.
    ``tokens`` is the long-lived :class:`~reconciler.credentials.oauth.TokenManager`; without
    one a throwaway manager is used (no cache across calls).  Raises CredentialError.
    """
    spec = resource.spec
    ns = resource.metadata.namespace
    versions: dict[str, str] = {}
    password: Secret | None = None
    token_provider = None
    ca_pem: str | None = None
    warnings: tuple[str, ...] = ()

    if spec.authentication == "UsernamePassword" and spec.password_from is not None:
        resolved = await sources.resolve(spec.password_from, ns)
        password = resolved.value
        versions["passwordFrom"] = resolved.version
    elif spec.authentication == "OAuth2" and spec.oauth2_provider_ref is not None:
        # Imported here: UsernamePassword-only users never load authlib/httpx.
        from reconciler.credentials.oauth import TokenManager as _TokenManager

        name = spec.oauth2_provider_ref.name
        provider = providers.get(name)
        if provider is None:
            raise CredentialError(
                "OAuth2ProviderNotFound",
                f"OAuth2Provider {name!r} (spec.oauth2ProviderRef) does not exist in "
                f"namespace {ns!r}",
            )
        manager = tokens if tokens is not None else _TokenManager(sources)
        try:
            await manager.token(provider)
        except CredentialError as exc:
            raise CredentialError(
                "OAuth2ProviderNotReady",
                f"OAuth2Provider {name!r} cannot obtain an access token: {exc.reason}: "
                f"{exc.message}",
                cause_reason=exc.reason,
            ) from None
        version = manager.provider_version(provider)
        if version is not None:
            versions[f"oauth2:{name}"] = version
        warnings = manager.provider_warnings(provider)

        async def token_provider_fn(force_refresh: bool, _p: OAuth2Provider = provider) -> Secret:
            return await manager.token(_p, force_refresh=force_refresh)

        token_provider = token_provider_fn

    if spec.tls.ca_bundle_from is not None:
        resolved = await sources.resolve(spec.tls.ca_bundle_from, ns)
        ca_pem = resolved.value.reveal()  # a CA certificate is public; the probe needs text
        versions["tls.caBundleFrom"] = resolved.version

    return SmtpCredentials(
        probe=ProbeCredentials(password=password, token_provider=token_provider,
                               ca_bundle_pem=ca_pem),
        versions=versions,
        warnings=warnings,
    )
