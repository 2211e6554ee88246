"""OAuth 2.0 access tokens for ``OAuth2Provider`` resources.

:class:`TokenManager` obtains tokens with authlib's httpx client (RFC 6749 sections 4.4
client credentials and 6 refresh token; no hand-written OAuth) and keeps them in memory:

* **Cache** per provider identity (namespace/name), valid while the provider's spec hash
  and the versions of its client secret and refresh token are unchanged, until
  ``expires_in`` minus a skew.  The skew is capped at half the lifetime, so a provider that
  issues very short-lived tokens still gets cache hits.  A response without ``expires_in``
  is assumed to live one hour (RFC 6749 leaves the default to the provider; a token the
  server rejects earlier is refreshed through ``force_refresh``).
* **Single-flight**: one lock per provider.  Concurrent callers wait for the one request in
  flight and share its token.  A ``force_refresh`` caller that waited while someone else
  refreshed takes that fresh token instead of asking again.
* **Retries** for transient failures (connection errors, timeouts, HTTP 5xx/429,
  ``temporarily_unavailable``/``server_error``) with tenacity: exponential backoff with
  jitter, a bounded number of attempts.  Everything else fails at once with its reason.
* **Refresh-token rotation**: a new ``refresh_token`` in a response is written back to the
  provider's ``refreshTokenFrom`` (file: atomic replace, mode 0600; Kubernetes: patch).
  When the source is read-only the new token is kept in memory (and preferred over the
  source while the source's version is unchanged) and the provider carries the warning
  ``RefreshTokenNotPersisted``.
* **https only**, except loopback: checked again here at request time, not just by the
  schema, because a provider object can be built without validation.

Errors are :class:`~reconciler.credentials.base.CredentialError` with a catalog reason; the
provider's ``error_description`` is included (scrubbed of the secrets we sent, shortened),
tokens and secrets never.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shlex
import ssl
import time
import warnings as _warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from reconciler.credentials.base import CredentialError, Resolved, SecretSource
from reconciler.credentials.http import EgressRefused, GuardedTransport, ResponseTooLarge
from reconciler.credentials.policy import owner_of, sources_for
from reconciler.probe.egress import EgressPolicy
from reconciler.probe.redact import scrub as _scrub
from reconciler.resources import OAuth2Provider, is_loopback_url
from reconciler.secret import Secret

with _warnings.catch_warnings():
    # authlib 1.9 announces a future move to the httpx2 package; httpx is what we ship.
    # (authlib.deprecate installs an "always" filter at import, hence the import above.)
    _warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

__all__ = [
    "OAuthError", "ProviderCheck", "TokenManager", "check_provider", "provider_key", "revoke",
    "scrub", "token_error",
]

DEFAULT_EXPIRES_IN = 3600.0
MAX_EXPIRES_IN = 366 * 86400.0
_MISSING_VALUE_REASONS = {"SecretValueInvalid", "SecretFileNotFound", "EnvVarNotSet",
                          "SecretNotFound", "SecretKeyNotFound"}
_DESCRIPTION_MAX = 300
_TRANSIENT_OAUTH_ERRORS = {"temporarily_unavailable", "server_error"}
_OAUTH_REASONS = {
    "invalid_client": "OAuth2InvalidClient",
    "invalid_grant": "OAuth2InvalidGrant",
    "invalid_scope": "OAuth2InvalidScope",
    "unauthorized_client": "OAuth2UnauthorizedClient",
}

Verify = ssl.SSLContext | bool | str


def provider_key(provider: OAuth2Provider) -> str:
    """The identity a token belongs to: ``namespace/name``."""
    return f"{provider.metadata.namespace}/{provider.metadata.name}"


def spec_hash(provider: OAuth2Provider) -> str:
    doc = provider.spec.model_dump(mode="json", by_alias=True)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def require_secure_url(url: str, what: str) -> None:
    """https everywhere; plain http only for a loopback host (tests, local development)."""
    if not (url.startswith("https://") or is_loopback_url(url)):
        raise CredentialError(
            "InvalidSpec",
            f"{what} {url} must be an https:// URL (http:// is allowed only for loopback hosts)",
        )


class _Transient(Exception):
    """Raised inside the retry loop for failures worth another attempt."""

    def __init__(self, error: CredentialError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Entry:
    """What the manager remembers about one provider (in memory only)."""

    cache_key: str = ""
    token: Secret | None = None
    expires_at: float = 0.0
    obtained_at: float = 0.0
    generation: int = 0
    digest_version: str | None = None
    # Refresh-token rotation: a token we could not (or did not yet) persist, valid while the
    # source still shows ``rotated_over`` (the version we replaced).
    rotated: Secret | None = None
    rotated_over: str | None = None
    # The refresh-token version we wrote ourselves -> the version the user gave, so our own
    # rotation does not look like a user change in provider_version() (no retest of every
    # relay per rotation).  Versions are keyed hashes of values, so no other reference
    # changes version when we write this one.
    written: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    warning_messages: tuple[str, ...] = ()
    # What the manager did that a person should be told (a rotated refresh token written
    # back, and where).
    notices: tuple[str, ...] = ()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class ProviderCheck:
    """The provider's own readiness (``OAuth2Provider`` status ``Ready``)."""

    ready: bool
    reason: str
    message: str
    version: str | None
    warnings: tuple[str, ...] = ()


class TokenManager:
    """Obtains, caches and refreshes access tokens for OAuth2Provider resources."""

    def __init__(
        self,
        sources: SecretSource,
        *,
        skew_seconds: float = 60,
        timeout_seconds: float = 10,
        attempts: int = 3,
        retry_initial_seconds: float = 0.5,
        retry_max_seconds: float = 5,
        verify: Verify = True,
        clock: Callable[[], float] = time.monotonic,
        offline: bool = False,
        egress: EgressPolicy | None = None,
        deadline_seconds: float | None = None,
    ) -> None:
        self._sources = sources
        # Offline (``plan``, ``apply --dry-run``): never contact an endpoint, never write.
        self.offline = offline
        # Which addresses an endpoint may resolve to (the probe's guard; default: loopback
        # allowed, link-local and cloud metadata denied).
        self.egress = egress if egress is not None else EgressPolicy()
        self._skew = skew_seconds
        self._timeout = timeout_seconds  # one HTTP request
        # One whole exchange, retries and backoff included (default: twice a request's).
        self._deadline = deadline_seconds if deadline_seconds is not None \
            else 2 * timeout_seconds
        self._attempts = max(1, attempts)
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._verify = verify
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self.requests = 0  # token endpoint requests made (for tests and metrics)

    # --- public API -----------------------------------------------------------------

    async def token(self, provider: OAuth2Provider, *, force_refresh: bool = False,
                    deadline: float | None = None) -> Secret:
        """A valid access token for ``provider`` (cached unless expired or ``force_refresh``).

        ``deadline``: seconds the whole exchange may take, retries included (a connection
        test's budget); it never exceeds the manager's own ``deadline_seconds``.  A
        token endpoint that drips or never answers ends as
        ``OAuth2TokenEndpointUnavailable`` on time.
        """
        if self.offline:
            raise CredentialError(
                "OAuth2TokenEndpointUnavailable",
                "this command does not contact token endpoints (it has no side effects)")
        entry = self._entries.setdefault(provider_key(provider), _Entry())
        seen_generation = entry.generation
        budget = self._deadline if deadline is None else max(0.1, min(deadline, self._deadline))
        try:
            async with asyncio.timeout(budget):
                async with entry.lock:
                    secrets = await self._resolve(provider, entry)
                    cache_key = self._cache_key(provider, secrets)
                    now = self._clock()
                    if entry.token is not None and entry.cache_key == cache_key:
                        if force_refresh and entry.generation != seen_generation:
                            return entry.token  # refreshed by another caller while we waited
                        if not force_refresh and now < entry.expires_at:
                            return entry.token
                    return await self._fetch(provider, entry, secrets, cache_key)
        except TimeoutError:
            raise CredentialError(
                "OAuth2TokenEndpointUnavailable",
                f"token endpoint {provider.spec.token_endpoint} did not complete the exchange "
                f"within {budget:g}s") from None

    async def offline_version(self, provider: OAuth2Provider) -> str:
        """The provider's version from its secret versions alone (no endpoint contacted):
        what :meth:`provider_version` gives after a token was obtained with these secrets."""
        entry = self._entries.get(provider_key(provider)) or _Entry()
        secrets = await self._resolve(provider, entry)
        return self._digest_version(provider, entry, secrets)

    def notices(self, provider: OAuth2Provider) -> tuple[str, ...]:
        """What was done that a person should know (e.g. a rotated refresh token written)."""
        entry = self._entries.get(provider_key(provider))
        return entry.notices if entry is not None else ()

    def provider_version(self, provider: OAuth2Provider) -> str | None:
        """Versions behind the last token (spec + client secret + refresh token), or None."""
        entry = self._entries.get(provider_key(provider))
        return entry.digest_version if entry is not None and entry.token is not None else None

    def invalidate(self, provider: OAuth2Provider) -> None:
        """Drop the cached token (e.g. after the provider was deleted or changed)."""
        entry = self._entries.get(provider_key(provider))
        if entry is not None:
            entry.token = None
            entry.expires_at = 0.0

    def expires_in(self, provider: OAuth2Provider) -> float | None:
        entry = self._entries.get(provider_key(provider))
        if entry is None or entry.token is None:
            return None
        return max(0.0, entry.expires_at - self._clock())

    @property
    def warnings(self) -> dict[str, tuple[str, ...]]:
        """Warning reasons per provider key (``namespace/name``), e.g. RefreshTokenNotPersisted."""
        return {k: e.warnings for k, e in self._entries.items() if e.warnings}

    def warning_messages(self, provider: OAuth2Provider) -> tuple[str, ...]:
        entry = self._entries.get(provider_key(provider))
        return entry.warning_messages if entry is not None else ()

    def provider_warnings(self, provider: OAuth2Provider) -> tuple[str, ...]:
        entry = self._entries.get(provider_key(provider))
        return entry.warnings if entry is not None else ()

    @property
    def deadline_seconds(self) -> float:
        """The longest one exchange may take, retries included."""
        return self._deadline

    def transport(self) -> GuardedTransport:
        """The guarded, bounded transport every request of this manager goes through
        (egress guard on the connected address, body cap, no proxy for http://, loopback
        never proxied; :mod:`reconciler.credentials.http`)."""
        return GuardedTransport(verify=self._verify, egress=self.egress)

    def http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A plain httpx client with this manager's TLS, timeout and transport."""
        if self.offline:
            raise CredentialError("OAuth2TokenEndpointUnavailable",
                                  "this command does not contact OAuth endpoints")
        return httpx.AsyncClient(timeout=self._timeout, follow_redirects=False,
                                 transport=self.transport(), trust_env=False, **kwargs)

    def oauth_client(self, provider: OAuth2Provider, client_secret: Secret | None,
                     **kwargs: Any) -> AsyncOAuth2Client:
        """authlib's client for ``provider`` (client authentication as the spec says)."""
        spec = provider.spec
        if self.offline:
            raise CredentialError("OAuth2TokenEndpointUnavailable",
                                  "this command does not contact OAuth endpoints")
        method = spec.token_endpoint_auth_method if client_secret is not None else "none"
        return AsyncOAuth2Client(
            client_id=spec.client_id,
            client_secret=client_secret.reveal() if client_secret is not None else None,
            token_endpoint_auth_method=method,
            revocation_endpoint_auth_method=method,
            scope=" ".join(spec.scopes) or None,
            timeout=self._timeout,
            follow_redirects=False,
            transport=self.transport(),
            trust_env=False,  # proxies are the transport's business (never http://)
            **kwargs,
        )

    # --- internals ------------------------------------------------------------------

    async def _resolve(self, provider: OAuth2Provider, entry: _Entry) -> dict[str, Resolved]:
        spec = provider.spec
        ns = provider.metadata.namespace
        src = sources_for(self._sources, provider)
        out: dict[str, Resolved] = {}
        if spec.client_secret_from is not None:
            out["clientSecretFrom"] = await src.resolve(spec.client_secret_from, ns)
        if spec.grant_type != "ClientCredentials" and spec.refresh_token_from is not None:
            try:
                rt = await src.resolve(spec.refresh_token_from, ns)
            except CredentialError as exc:
                raise _no_refresh_token(provider, exc) from None
            if entry.rotated is not None:
                if rt.version == entry.rotated_over:
                    rt = Resolved(entry.rotated, rt.version)  # in-memory rotation wins
                else:  # the user put a new token into the source: it wins
                    entry.rotated = entry.rotated_over = None
                    entry.warnings = entry.warning_messages = ()
            out["refreshTokenFrom"] = rt
        return out

    def _cache_key(self, provider: OAuth2Provider, secrets: dict[str, Resolved]) -> str:
        parts = [spec_hash(provider)] + [f"{k}={v.version}" for k, v in sorted(secrets.items())]
        return "|".join(parts)

    def _digest_version(self, provider: OAuth2Provider, entry: _Entry,
                        secrets: dict[str, Resolved]) -> str:
        parts = [spec_hash(provider)]
        for k, v in sorted(secrets.items()):
            parts.append(f"{k}={entry.written.get(v.version, v.version)}")
        return "o:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    async def _fetch(self, provider: OAuth2Provider, entry: _Entry,
                     secrets: dict[str, Resolved], cache_key: str) -> Secret:
        spec = provider.spec
        require_secure_url(spec.token_endpoint, "tokenEndpoint")
        client_secret = secrets.get("clientSecretFrom")
        refresh = secrets.get("refreshTokenFrom")
        sent = [s.value for s in (client_secret, refresh) if s is not None]
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=self._retry_initial, max=self._retry_max,
                                        jitter=self._retry_initial),
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    body = await self._request(provider, client_secret, refresh, sent)
        except _Transient as exc:
            raise exc.error from None

        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise CredentialError(
                "OAuth2TokenEndpointError",
                f"token endpoint {spec.token_endpoint} answered without an access_token",
            )
        token_type = str(body.get("token_type") or "Bearer")
        if token_type.lower() != "bearer":
            raise CredentialError(
                "OAuth2TokenEndpointError",
                f"token endpoint {spec.token_endpoint} issued a "
                f"{scrub(token_type, sent)[:40]!r} token; "
                "SMTP XOAUTH2/OAUTHBEARER need a Bearer token",
            )
        lifetime = _expires_in(body.get("expires_in"))
        now = self._clock()
        skew = min(self._skew, lifetime / 2)

        token = Secret(access)
        new_rt = body.get("refresh_token")
        if (refresh is not None and isinstance(new_rt, str) and new_rt
                and new_rt != refresh.value.reveal()):
            cache_key = await self._rotate(provider, entry, secrets, Secret(new_rt))

        entry.token = token
        entry.obtained_at = now
        entry.expires_at = now + lifetime - skew
        entry.cache_key = cache_key
        entry.generation += 1
        entry.digest_version = self._digest_version(provider, entry, secrets)
        return token

    async def _rotate(self, provider: OAuth2Provider, entry: _Entry,
                      secrets: dict[str, Resolved], new_rt: Secret) -> str:
        """Persist a rotated refresh token to the very reference it was read from.

        Returns the cache key for the new versions.  The write goes through the source
        policy like the read did (the operator writes only to a Secret of the provider's
        namespace).
        """
        ref = provider.spec.refresh_token_from
        assert ref is not None
        old = secrets["refreshTokenFrom"]
        user_version = entry.written.get(old.version, old.version)
        src = sources_for(self._sources, provider)
        writer = getattr(src, "write", None)
        try:
            if writer is None:
                raise CredentialError("RefreshTokenNotPersisted", f"{ref.describe()} is read-only")
            new_version: str = await writer(ref, provider.metadata.namespace, new_rt)
        except CredentialError as exc:
            entry.rotated = new_rt
            entry.rotated_over = old.version
            entry.warnings = ("RefreshTokenNotPersisted",)
            entry.warning_messages = (
                f"the token endpoint rotated the refresh token but {ref.describe()} could not "
                f"be updated ({exc.message}); the new token is kept in memory only and the "
                f"next restart will fail",
            )
            entry.notices = ()
            # The source is unchanged, so the cache key stays valid.
            return self._cache_key(provider, secrets)
        entry.rotated = entry.rotated_over = None
        entry.warnings = entry.warning_messages = ()
        entry.notices = (
            f"the token endpoint rotated the refresh token of OAuth2Provider "
            f"{provider_key(provider)}; the new one was written to {ref.describe()}, the "
            f"reference it was read from",)
        entry.written = {new_version: user_version}
        secrets["refreshTokenFrom"] = Resolved(new_rt, new_version)
        return self._cache_key(provider, secrets)

    async def _request(self, provider: OAuth2Provider, client_secret: Resolved | None,
                       refresh: Resolved | None, sent: list[Secret]) -> dict[str, Any]:
        """One token request; maps every failure to a CredentialError (or _Transient)."""
        spec = provider.spec
        url = spec.token_endpoint
        self.requests += 1
        try:
            async with self.oauth_client(
                provider, client_secret.value if client_secret else None
            ) as client:
                if spec.grant_type == "ClientCredentials":
                    token = await client.fetch_token(url, grant_type="client_credentials")
                else:
                    assert refresh is not None
                    token = await client.refresh_token(url, refresh_token=refresh.value.reveal())
        except (OAuthError, httpx.HTTPError, ValueError, TypeError, OverflowError) as exc:
            # TypeError/OverflowError: authlib's arithmetic on fields such as
            # `expires_in: 1e400` (infinity once parsed) - a malformed response.
            err, transient = token_error(exc, url, sent, self._timeout)
            if transient:
                raise _Transient(err) from None
            raise err from None
        return dict(token)


def token_error(exc: Exception, url: str, sent: list[Secret],
                timeout: float) -> tuple[CredentialError, bool]:
    """Map a token request failure to (error, transient).  Never renders a response body."""
    if isinstance(exc, EgressRefused):
        return CredentialError("EgressDenied",
                               f"token endpoint {url}: {exc.host!r} resolves to {exc.address}: "
                               f"{exc.why}"), False
    if isinstance(exc, ResponseTooLarge):
        return CredentialError(
            "OAuth2TokenEndpointError",
            f"token endpoint {url} answered more than {exc.limit // 1024} KiB; a token "
            "response is a few kilobytes, the rest was not read"), False
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.is_redirect:
        return CredentialError("OAuth2TokenEndpointError", _redirect_text(
            "token endpoint", url, exc.response)), False
    if isinstance(exc, OAuthError):
        error = str(exc.error or "")
        desc = scrub(str(exc.description or ""), sent)
        shown = scrub(error, sent)[:64]  # the endpoint's word: may be anything
        text = f"token endpoint {url} answered {shown}" + (f": {desc}" if desc else "")
        if error in _TRANSIENT_OAUTH_ERRORS:
            return CredentialError("OAuth2TokenEndpointUnavailable", text), True
        return CredentialError(_OAUTH_REASONS.get(error, "OAuth2TokenEndpointError"), text), False
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        text = f"token endpoint {url} answered HTTP {status}"
        if status >= 500 or status == 429:
            return CredentialError("OAuth2TokenEndpointUnavailable", text), True
        return CredentialError("OAuth2TokenEndpointError", text), False
    if isinstance(exc, httpx.TimeoutException):
        return CredentialError("OAuth2TokenEndpointUnavailable",
                               f"token endpoint {url} did not answer within {timeout:g}s"), True
    if isinstance(exc, httpx.HTTPError):
        return CredentialError(
            "OAuth2TokenEndpointUnavailable",
            f"token endpoint {url} could not be reached ({type(exc).__name__})"), True
    return CredentialError(
        "OAuth2TokenEndpointError",
        f"token endpoint {url} answered a malformed token response (not a JSON object, or "
        f"fields of the wrong type)"), False


def _redirect_text(what: str, url: str, response: httpx.Response) -> str:
    target = response.headers.get("location", "")
    try:
        where = httpx.URL(url).join(target).host if target else ""
    except (httpx.InvalidURL, ValueError):
        where = ""
    shown = f" to host {where!r}" if where else ""
    return (f"{what} {url} answered a redirect (HTTP {response.status_code}{shown}); "
            "redirects are never followed (credentials would go elsewhere): configure the "
            "final URL")


def _expires_in(value: Any) -> float:
    """``expires_in`` as seconds, within [1 s, one year]; absent or nonsense: one hour.

    A hostile or broken endpoint can answer ``1e400`` (infinity once parsed), a negative
    number, or a string; none of them may make an expiry time that overflows later.
    """
    if isinstance(value, bool):
        return DEFAULT_EXPIRES_IN
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_EXPIRES_IN
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_EXPIRES_IN
    return min(max(seconds, 1.0), MAX_EXPIRES_IN)


def _no_refresh_token(provider: OAuth2Provider, exc: CredentialError) -> CredentialError:
    """An empty or missing refresh-token source: say how to obtain one, with real names."""
    if exc.reason not in _MISSING_VALUE_REASONS:
        return exc
    spec = provider.spec
    assert spec.refresh_token_from is not None
    where = spec.refresh_token_from.describe()
    name, ns = provider.metadata.name, provider.metadata.namespace
    if spec.authorization_endpoint:
        manifest = owner_of(provider).manifest
        target = shlex.quote(manifest) if manifest else "FILE-WITH-THIS-OAUTH2PROVIDER"
        how = (f"run `smtpctl oauth login {name} -f {target}"
               + (f" -n {ns}" if ns != "default" else "") + "` to obtain one")
    else:
        how = ("put the refresh token your provider issued there (the provider has no "
               "authorizationEndpoint, so `smtpctl oauth login` cannot obtain one)")
    return CredentialError(exc.reason, f"OAuth2Provider {ns}/{name} has no refresh token yet: "
                                       f"{exc.message} ({where}); {how}")


def scrub(text: str, secrets: list[Secret]) -> str:
    """The provider's words for one line of output: every form of anything we sent it
    masked (plain, case-changed, split, URL-encoded, hex, base64 at any offset, inside
    ``Basic base64(id:secret)``), control characters escaped, at most 300 characters
    (:mod:`reconciler.probe.redact`)."""
    return _scrub(text, secrets, limit=_DESCRIPTION_MAX)


async def check_provider(provider: OAuth2Provider, tokens: TokenManager) -> ProviderCheck:
    """The provider's readiness: a token can be obtained and ``testEndpoint`` accepts it."""
    try:
        token = await tokens.token(provider)
        if provider.spec.test_endpoint:
            await _call_test_endpoint(provider, tokens, token)
    except CredentialError as exc:
        return ProviderCheck(False, exc.reason, exc.message, tokens.provider_version(provider),
                             tokens.provider_warnings(provider))
    left = tokens.expires_in(provider)
    message = "An access token was obtained"
    if left is not None:
        message += f" (cached for {left:.0f}s)"
    if provider.spec.test_endpoint:
        message += "; the test endpoint accepted it"
    extra = tokens.warning_messages(provider)
    if extra:
        message += "; warning: " + " ".join(extra)
    return ProviderCheck(True, "TokenObtained", message, tokens.provider_version(provider),
                         tokens.provider_warnings(provider))


async def _call_test_endpoint(provider: OAuth2Provider, tokens: TokenManager,
                              token: Secret) -> None:
    url = provider.spec.test_endpoint
    assert url is not None
    require_secure_url(url, "testEndpoint")
    for attempt in range(2):
        try:
            async with asyncio.timeout(tokens.deadline_seconds), tokens.http_client() as http:
                # Only the status matters: the body is never read (streamed, then closed).
                async with http.stream(
                        "GET", url, headers={"Authorization": f"Bearer {token.reveal()}"}
                ) as resp:
                    status = resp.status_code
                    redirect = _redirect_text("test endpoint", url, resp) \
                        if resp.is_redirect else None
        except TimeoutError:
            raise CredentialError(
                "OAuth2TestEndpointFailed",
                f"test endpoint {url} did not answer within {tokens.deadline_seconds:g}s",
            ) from None
        except EgressRefused as exc:
            raise CredentialError("EgressDenied", f"test endpoint {url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise CredentialError(
                "OAuth2TestEndpointFailed",
                f"test endpoint {url} could not be reached ({type(exc).__name__})",
            ) from None
        if redirect is not None:
            raise CredentialError("OAuth2TestEndpointFailed", redirect)
        if 200 <= status < 300:
            return
        if status == 401 and attempt == 0:
            # A token rejected as expired or revoked: fetch a fresh one and ask once more.
            token = await tokens.token(provider, force_refresh=True)
            continue
        raise CredentialError(
            "OAuth2TestEndpointFailed",
            f"test endpoint {url} answered HTTP {status} to the access token",
        )


async def revoke(provider: OAuth2Provider, sources: SecretSource, tokens: TokenManager) -> str:
    """Revoke the provider's refresh token at ``revokeEndpoint`` (RFC 7009).

    Returns a description of what was revoked.  For a ClientCredentials provider there is
    no long-lived token: the cached access token (if any) is revoked instead.
    """
    spec = provider.spec
    if not spec.revoke_endpoint:
        raise CredentialError("InvalidSpec",
                              f"OAuth2Provider {provider.metadata.name!r} has no revokeEndpoint")
    require_secure_url(spec.revoke_endpoint, "revokeEndpoint")
    ns = provider.metadata.namespace
    src = sources_for(sources, provider)
    client_secret = (await src.resolve(spec.client_secret_from, ns)
                     if spec.client_secret_from is not None else None)
    if spec.grant_type != "ClientCredentials" and spec.refresh_token_from is not None:
        target = (await src.resolve(spec.refresh_token_from, ns)).value
        hint, what = "refresh_token", f"the refresh token from {spec.refresh_token_from.describe()}"
    else:
        target = await tokens.token(provider)
        hint, what = "access_token", "the current access token"
    sent = [target] + ([client_secret.value] if client_secret else [])
    try:
        async with asyncio.timeout(tokens.deadline_seconds), tokens.oauth_client(
                provider, client_secret.value if client_secret else None) as client:
            resp = await client.revoke_token(spec.revoke_endpoint, token=target.reveal(),
                                             token_type_hint=hint)
            status = resp.status_code
            try:
                doc = resp.json() if status >= 400 and not resp.is_redirect else {}
            except ValueError:
                doc = {}
    except TimeoutError:
        raise CredentialError(
            "OAuth2TokenEndpointUnavailable",
            f"revoke endpoint {spec.revoke_endpoint} did not answer within "
            f"{tokens.deadline_seconds:g}s") from None
    except EgressRefused as exc:
        raise CredentialError("EgressDenied",
                              f"revoke endpoint {spec.revoke_endpoint}: {exc}") from None
    except ResponseTooLarge as exc:
        raise CredentialError(
            "OAuth2TokenEndpointError",
            f"revoke endpoint {spec.revoke_endpoint} answered more than "
            f"{exc.limit // 1024} KiB") from None
    except httpx.HTTPError as exc:
        raise CredentialError(
            "OAuth2TokenEndpointUnavailable",
            f"revoke endpoint {spec.revoke_endpoint} could not be reached ({type(exc).__name__})",
        ) from None
    if resp.is_redirect:
        raise CredentialError("OAuth2TokenEndpointError",
                              _redirect_text("revoke endpoint", spec.revoke_endpoint, resp))
    if status >= 400:
        error = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        desc = scrub(str(doc.get("error_description", "")) if isinstance(doc, dict) else "",
                     sent)
        reason = _OAUTH_REASONS.get(error, "OAuth2TokenEndpointError")
        shown = scrub(error, sent)[:64]
        raise CredentialError(
            reason,
            f"revoke endpoint {spec.revoke_endpoint} answered HTTP {status}"
            + (f" {shown}" if shown else "") + (f": {desc}" if desc else ""),
        )
    tokens.invalidate(provider)
    return what
