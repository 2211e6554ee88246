"""Publishing the selected relay of a namespace as a Secret applications can mount.

For each namespace with an active relay the operator maintains one Secret (default name
``smtp-active-relay``) whose keys are the ``SMTP_*`` names of ``smtpctl get active -o env``
(:mod:`reconciler.engine.active`), with the resolved password or a fresh access token.

* The content comes from the relay's **last-known-good** summary (``status.active``),
  never from a spec that has not passed a test.
* It is rewritten only when its *fingerprint* changes - relay, active generation and the
  digest of the tested configuration (which includes the secret versions) - so a password
  rotation that passed its test republishes, and nothing else does.  The fingerprint is
  kept in an annotation, so a restarted operator does not rewrite it either.  An OAuth2
  access token is refreshed when less than a quarter of its life is left.
* It carries an owner reference to the active ExternalSmtp (deleting the relay deletes
  it) and is deleted when no relay is active in the namespace.
* **Only our own.**  A Secret of that name that the operator did not create (no
  ``app.kubernetes.io/managed-by: smtpctl-operator`` label and ExternalSmtp owner) is
  never overwritten or deleted: the operator logs a warning and does not publish in
  that namespace until the name is free.  Replacements and deletions carry the
  ``resourceVersion``/``uid`` they were decided on.
* **Only the tested value** (issue 12, ``active``'s edit): the password (and the CA
  bundle, published as PEM in ``SMTP_TLS_CA_PEM``) is published only when its current
  keyed version is the one in the active record
  (:func:`reconciler.engine.active.require_tested`); an OAuth 2.0 token only while the
  provider is Ready and the token comes from the provider configuration (spec and secret
  versions) the relay's test obtained its own token with.  Otherwise the Secret is left as
  it is (it holds the tested value).  The fingerprint includes the record's health and
  last success, so ``SMTP_READY`` / ``SMTP_LAST_SUCCESS`` follow the relay in use, and
  :meth:`Publisher.refresh_in` tells the relay's worker when the published token needs
  refreshing (at three quarters of its life), so it never waits for a re-verification.
* **A refusal is retried with backoff**, not at every pass: when the value cannot be
  published (the credential is unavailable, or not the tested one) the namespace is tried
  again after 5 s, doubling up to 5 minutes, or at once when the fingerprint changes (a new
  test passed).  Before, a refused OAuth2 token past its expiry brought the relay's worker
  back every second: a warning and a token request per second, per namespace.
* The password reference of the active generation is ``status.active.passwordFrom``; when
  the API server pruned it, the spec's reference is used only if the spec *is* the active
  generation - otherwise the Secret is left as it is rather than guessed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from reconciler.credentials.base import CredentialError, SecretSource
from reconciler.credentials.policy import sources_for
from reconciler.engine.active import ActiveRelayView, NotTested, require_tested, to_env
from reconciler.engine.conditions import is_true, rfc3339
from reconciler.resources import API_VERSION, KIND_OAUTH2, KIND_SMTP, SecretRef
from reconciler.secret import Secret
from reconciler.stores.base import ObjectRef
from reconciler.stores.kube import KubeStore
from reconciler.stores.kubeapi import Conflict, KubeApi, NotFound, resource_path
from reconciler.stores.kubetypes import (
    KubeObject,
    as_object,
    is_deleting,
    meta_of,
    namespace_of,
    resource_version,
    uid_of,
)

log = logging.getLogger(__name__)

FINGERPRINT = "smtp.reconciler.dev/fingerprint"
TOKEN_EXPIRES = "smtp.reconciler.dev/token-expires-at"  # noqa: S105 - an annotation
MANAGED_BY = {"app.kubernetes.io/managed-by": "smtpctl-operator"}


def owned(secret: KubeObject) -> bool:
    """Did the operator create this Secret?  Our label and an ExternalSmtp owner."""
    meta = meta_of(secret)
    labels = meta.get("labels") or {}
    owners = meta.get("ownerReferences") or []
    return labels.get("app.kubernetes.io/managed-by") == MANAGED_BY[
        "app.kubernetes.io/managed-by"] and any(
        o.get("kind") == KIND_SMTP and o.get("apiVersion") == API_VERSION for o in owners)

# (namespace, provider) -> (access token, seconds it lives, version of the provider's
# configuration the token was obtained with: TokenManager.provider_version)
TokenFn = Callable[[str, str], Awaitable[tuple[Secret, float | None, str | None]]]

RETRY_FIRST = 5.0  # seconds until a refused namespace is tried again; doubles per refusal
RETRY_MAX = 300.0


class Publisher:
    def __init__(self, api: KubeApi, store: KubeStore, sources: SecretSource, *,
                 name: str = "smtp-active-relay", token_fn: TokenFn | None = None,
                 on_write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.store = store
        self.sources = sources
        self.name = name
        self.token_fn = token_fn
        self.on_write = on_write
        self._published: dict[str, tuple[str, float]] = {}  # ns -> (fingerprint, token expiry)
        self._loaded: set[str] = set()
        self._foreign: set[str] = set()  # namespaces where the name is taken by someone else
        self._locks: dict[str, asyncio.Lock] = {}  # one sync at a time per namespace
        # ns -> (fingerprint refused, when to try again, the backoff that led there)
        self._refused: dict[str, tuple[str, float, float]] = {}
        self._clock = clock

    def _path(self, ns: str, with_name: bool = True) -> str:
        return resource_path("v1", "secrets", ns, self.name if with_name else None)

    def active_in(self, ns: str) -> KubeObject | None:
        for body in self.store.selected_in(KIND_SMTP, ns):
            st = body.get("status") or {}
            if st.get("selected") and st.get("active") and not is_deleting(body):
                return body
        return None

    async def _current(self, ns: str) -> KubeObject | None:
        """The Secret as it is now, or None; a Secret we did not create is marked foreign."""
        try:
            cur = as_object(await self.api.get(self._path(ns)))
        except NotFound:
            self._foreign.discard(ns)
            return None
        if not owned(cur):
            if ns not in self._foreign:
                log.warning(f"a Secret {ns}/{self.name} exists that the operator did not "
                            "create; not publishing there (delete or rename it, or choose "
                            "another --publish-secret)", extra={"namespace": ns})
            self._foreign.add(ns)
        else:
            self._foreign.discard(ns)
        return cur

    async def _load(self, ns: str) -> None:
        """What is published already (after a restart), from its annotations."""
        if ns in self._loaded:
            return
        cur = await self._current(ns)
        if cur is not None and ns not in self._foreign:
            ann = meta_of(cur).get("annotations") or {}
            self._published[ns] = (ann.get(FINGERPRINT, ""), float(ann.get(TOKEN_EXPIRES, 0)))
        self._loaded.add(ns)

    async def sync(self, ns: str) -> str:
        """Bring the namespace's Secret in line; returns created|updated|deleted|unchanged.

        One at a time per namespace: every pass of the namespace calls this, and passes
        that ran together each saw the old fingerprint and wrote the same Secret (20-30
        identical PUTs, and POSTs answered 409, when a new fleet's first passes ended)."""
        lock = self._locks.get(ns)
        if lock is None:
            lock = self._locks[ns] = asyncio.Lock()
        async with lock:
            return await self._sync(ns)

    async def _sync(self, ns: str) -> str:
        await self._load(ns)
        if ns in self._foreign:
            await self._current(ns)  # still there? (deleted or replaced by ours: retry)
            if ns in self._foreign:
                return "unchanged"
        body = self.active_in(ns)
        if body is None:
            if ns in self._published:
                cur = await self._current(ns)
                if cur is not None and ns not in self._foreign:
                    with contextlib.suppress(NotFound):  # only that object, if still ours
                        await self.api.delete(self._path(ns), {
                            "apiVersion": "v1", "kind": "DeleteOptions",
                            "preconditions": {"uid": uid_of(cur)}})
                del self._published[ns]
                self._note("deleted")
                return "deleted"
            return "unchanged"
        meta, active = meta_of(body), (body.get("status") or {})["active"]
        fingerprint = f"{meta['name']}/{meta.get('uid', '')}/{active.get('generation')}/" \
                      f"{active.get('digest', '')}/{active.get('health', '')}/" \
                      f"{active.get('verifiedAt', '')}"
        old_fp, expiry = self._published.get(ns, ("", 0.0))
        token_stale = active.get("authentication") == "OAuth2" and expiry and \
            expiry - self._clock() < 0
        if fingerprint == old_fp and not token_stale:
            return "unchanged"
        refused = self._refused.get(ns)
        if refused is not None and refused[0] == fingerprint and self._clock() < refused[1]:
            return "unchanged"  # refused lately: tried again at its time, not at every pass
        try:
            secret, new_expiry = await self._credential(body, active)
            ca_pem = await self._ca_pem(body, active)
        except CredentialError as exc:
            log.warning("not publishing: credential unavailable",
                        extra={"resource": f"{KIND_SMTP}/{ns}/{meta['name']}",
                               "reason": exc.reason,
                               "retry_in": self._refuse(ns, fingerprint)})
            return "unchanged"
        except NotTested as exc:
            log.warning("not publishing an untested value; the Secret keeps the tested one",
                        extra={"resource": f"{KIND_SMTP}/{ns}/{meta['name']}",
                               "what": exc.what, "reason": exc.message,
                               "retry_in": self._refuse(ns, fingerprint)})
            return "unchanged"
        view = ActiveRelayView(ns, meta["name"], active, ca_pem=ca_pem,
                               token_expires_at=rfc3339(new_expiry) if new_expiry else None)
        if secret is None and active.get("authentication") != "None":
            return "unchanged"  # the active generation's reference is unknown: keep as is
        data = {k: base64.b64encode(v.encode()).decode() for k, v in to_env(view, secret).items()}
        manifest = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {
                "name": self.name, "namespace": ns, "labels": dict(MANAGED_BY),
                "annotations": {FINGERPRINT: fingerprint,
                                TOKEN_EXPIRES: str(int(new_expiry or 0))},
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND_SMTP,
                                     "name": meta["name"], "uid": meta.get("uid", ""),
                                     "controller": True, "blockOwnerDeletion": False}],
            },
            "data": data,
        }
        op = await self._write(ns, manifest)
        if op is None:
            return "unchanged"
        self._published[ns] = (fingerprint, float(new_expiry or 0))
        self._refused.pop(ns, None)
        self._note(op)
        log.info("published active relay", extra={"namespace": ns, "relay": meta["name"],
                                                   "generation": active.get("generation"),
                                                   "op": op})
        return op

    async def _write(self, ns: str, manifest: dict[str, Any]) -> str | None:
        """Create, or replace our own (never a foreign one); None: not written."""
        for _ in range(8):
            cur = await self._current(ns)
            if ns in self._foreign:
                return None
            try:
                if cur is None:
                    await self.api.post(self._path(ns, with_name=False), manifest)
                    return "created"
                await self.api.put(self._path(ns), {**manifest, "metadata": {
                    **manifest["metadata"], "resourceVersion": resource_version(cur)}})
                return "updated"
            except (Conflict, NotFound):
                continue  # created, replaced or deleted meanwhile: look again
        log.warning("could not publish: the Secret keeps changing", extra={"namespace": ns})
        return None

    async def _ca_pem(self, body: KubeObject, active: dict[str, Any]) -> str | None:
        """The CA bundle the test trusted, as PEM - only the tested one."""
        ref = (active.get("tls") or {}).get("caBundleFrom")
        if not ref:
            return None
        resolved = await sources_for(self.sources, body).resolve(
            SecretRef.model_validate(ref), namespace_of(body))
        require_tested(active, "caBundle", resolved.version)
        pem: str = resolved.value.reveal()  # a CA certificate is public
        return pem

    def _refuse(self, ns: str, fingerprint: str) -> float:
        """Note a refusal: the seconds until ``ns`` is tried again (doubling per refusal of
        the same fingerprint)."""
        last = self._refused.get(ns)
        backoff = min(RETRY_MAX, max(RETRY_FIRST, 2 * last[2])) \
            if last is not None and last[0] == fingerprint else RETRY_FIRST
        self._refused[ns] = (fingerprint, self._clock() + backoff, backoff)
        return backoff

    def refresh_in(self, ns: str) -> float | None:
        """Seconds until the access token published in ``ns`` must be refreshed (None: no
        token published), or, after a refusal, until it is tried again.  The relay's worker
        comes back then."""
        expiry = self._published.get(ns, ("", 0.0))[1]
        if not expiry:
            return None
        refused = self._refused.get(ns)
        due = refused[1] if refused is not None else expiry
        return max(1.0, due - self._clock())

    def _note(self, op: str) -> None:
        if self.on_write is not None:
            self.on_write(op)

    async def _credential(self, body: KubeObject,
                          active: dict[str, Any]) -> tuple[Secret | None, float | None]:
        ns = namespace_of(body)
        auth = active.get("authentication")
        same_gen = active.get("generation") == meta_of(body).get("generation")
        spec = body.get("spec") or {}
        if auth == "UsernamePassword":
            raw = active.get("passwordFrom") or (spec.get("passwordFrom") if same_gen else None)
            if not raw:
                return None, None
            # Resolved for the relay that holds the reference, under the operator's source
            # policy: the Secret never carries a value the tenant could not read itself.
            resolved = await sources_for(self.sources, body).resolve(
                SecretRef.model_validate(raw), ns)
            require_tested(active, "password", resolved.version)
            return resolved.value, None
        if auth == "OAuth2" and self.token_fn is not None:
            provider = active.get("oauth2Provider") or \
                ((spec.get("oauth2ProviderRef") or {}).get("name") if same_gen else None)
            if not provider:
                return None, None
            pbody = self.store.cached(ObjectRef(KIND_OAUTH2, ns, str(provider)))
            if pbody is None or not is_true(pbody.get("status") or {}, "Ready"):
                raise NotTested("oauth2", f"OAuth2Provider {provider!r} is not Ready")
            # Checked after the token is obtained, against the configuration it was obtained
            # with (no window between the check and the fetch).  Not the provider's test
            # memo: the operator writes that after the provider's status, so a relay tested
            # in between had no version to record, and nothing woke it when the memo came.
            token, expires_in, version = await self.token_fn(ns, str(provider))
            tested = active.get("credentialVersion")
            if isinstance(tested, str) and tested.startswith("sha256:"):
                # A record of an earlier smtpctl: the provider's memo digest was recorded.
                from reconciler.stores.kube import to_stored

                pmemo = to_stored(pbody).memo
                version = pmemo.digest if pmemo else None
            require_tested(active, "oauth2", version)
            now = self._clock()
            expiry = now + 0.75 * expires_in if expires_in else now + 1800
            return token, expiry
        return None, None
