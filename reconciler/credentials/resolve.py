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

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.credentials.base import CredentialError, Resolved, SecretSource
from reconciler.credentials.policy import sources_for
from reconciler.probe.verdict import ProbeCredentials
from reconciler.resources import ExternalSmtp, OAuth2Provider, SecretRef
from reconciler.secret import Secret

if TYPE_CHECKING:
    from reconciler.credentials.oauth import TokenManager

__all__ = ["SmtpCredentials", "check_ca_bundle", "resolve_public", "resolve_smtp_credentials"]


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
    one a throwaway manager is used (no cache across calls).  An *offline* manager
    (``plan``, ``apply --dry-run``) never contacts the token endpoint: the provider's version
    is computed from its secret versions and the probe gets no token provider.  Every
    reference is resolved *for* ``resource`` (the source policy judges it for this
    resource; ``docs/security.md``).  The token request is bounded by the resource's
    ``connectionTest.timeoutSeconds``.  Raises CredentialError.
    """
    spec = resource.spec
    ns = resource.metadata.namespace
    src = sources_for(sources, resource)
    versions: dict[str, str] = {}
    password: Secret | None = None
    token_provider = None
    ca_pem: str | None = None
    warnings: tuple[str, ...] = ()

    if spec.authentication == "UsernamePassword" and spec.password_from is not None:
        resolved = await src.resolve(spec.password_from, ns)
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
        budget = float(spec.connection_test.timeout_seconds)
        try:
            if manager.offline:
                version: str | None = await manager.offline_version(provider)
            else:
                await manager.token(provider, deadline=budget)
                version = manager.provider_version(provider)
        except CredentialError as exc:
            raise CredentialError(
                "OAuth2ProviderNotReady",
                f"OAuth2Provider {name!r} cannot obtain an access token: {exc.reason}: "
                f"{exc.message}",
                cause_reason=exc.reason,
            ) from None
        if version is not None:
            versions[f"oauth2:{name}"] = version
        warnings = manager.provider_warnings(provider)

        async def token_provider_fn(force_refresh: bool, _p: OAuth2Provider = provider) -> Secret:
            return await manager.token(_p, force_refresh=force_refresh, deadline=budget)

        if not manager.offline:
            token_provider = token_provider_fn

    if spec.tls.ca_bundle_from is not None:
        resolved = await resolve_public(src, spec.tls.ca_bundle_from, ns)
        ca_pem = resolved.value.reveal()  # a CA certificate is public; the probe needs text
        check_ca_bundle(ca_pem, spec.tls.ca_bundle_from.describe())
        versions["tls.caBundleFrom"] = resolved.version

    return SmtpCredentials(
        probe=ProbeCredentials(password=password, token_provider=token_provider,
                               ca_bundle_pem=ca_pem),
        versions=versions,
        warnings=warnings,
    )


async def resolve_public(source: SecretSource, ref: SecretRef, namespace: str) -> Resolved:
    """Resolve a reference to a public value (a CA bundle: world-readable files are fine)."""
    if getattr(source, "accepts_public", False):
        resolved: Resolved = await source.resolve(ref, namespace, public=True)  # type: ignore[call-arg]
        return resolved
    return await source.resolve(ref, namespace)


def check_ca_bundle(pem: str, where: str) -> None:
    """A CA bundle that OpenSSL cannot load is a configuration error, named as such
    (``CABundleInvalid``), not a failure of the server's TLS.

    Every pass of every relay with a CA bundle asks; the answer is a function of the
    bundle's text only, so it is cached by that text (the cache's key is the string
    itself: Python keeps a string's hash on the object, so asking again with the object a
    secret source handed out - the same for every relay of a pass - costs a dictionary
    lookup; another object with the same text costs one comparison).  It used to hash the
    bundle with SHA-256 on every call (~0.16 ms for a 220 KB bundle, per relay and pass)."""
    problem = _ca_problem(pem)
    if problem is not None:
        raise CredentialError(
            "CABundleInvalid",
            f"the CA bundle from {where} (spec.tls.caBundleFrom) cannot be loaded: {problem}; "
            "it must hold PEM certificates (-----BEGIN CERTIFICATE-----)")


@functools.lru_cache(maxsize=64)
def _ca_problem(pem: str) -> str | None:
    import ssl

    try:
        # A bare client context: create_default_context() would first load the system's
        # CA store (~30 ms, once per apply, on the way to its first connection test),
        # which this check does not need; loading the bundle is the same call either way.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        said = str(exc.args[-1]) if exc.args else type(exc).__name__
        return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", said)[:200]  # OpenSSL's words, no data
    return None
