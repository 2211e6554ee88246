"""The operator's ``secretKeyRef`` source: referenced Secrets only, read by name, kept fresh.

The engine resolves credentials on every pass (the secret *versions* are part of the plan
digest), so each referenced Secret is read once by name (``GET``, single-flight per
Secret) and then served from memory; the Secret watch keeps those entries current and
says which resources to wake.  What is kept is bounded by what resources reference (the
operator's :class:`~reconciler.runtimes.operator.index.DependencyIndex`): a namespace full
of unrelated Secrets (Helm releases) costs no memory - the operator never LISTs Secret
contents, it only watches changes and drops those nobody references at once.

Decoding, checks and versions are the credentials layer's own
(:func:`~reconciler.credentials.sources.resolve_from_secret`).  Values live only in
memory and are never logged.  ``resourceVersion`` is opaque: it is compared for equality
only, never ordered; a GET that raced with a watch event for the same Secret is not
stored (the watch event is newer).

After a gap in the Secret watch (API unreachable, watch expired) every kept entry is
*stale* (:meth:`KubeSecrets.mark_stale`): it may hold a value the cluster no longer has,
so it is re-read by name before it is used again (a resource created during an outage is
never tested with a rotated-away password), and :meth:`KubeSecrets.resync` re-reads the
rest.  Whichever read comes first, a content change against the entry marked stale is
reported once (``on_changed``) so the resources using it are woken.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any, cast

from reconciler.credentials.base import CredentialError, Resolved
from reconciler.credentials.sources import resolve_from_secret
from reconciler.resources import SecretRef
from reconciler.secret import Secret
from reconciler.stores.kubeapi import (
    ApiError,
    Forbidden,
    KubeApi,
    NotFound,
    Unauthorized,
    resource_path,
)
from reconciler.stores.kubetypes import (
    KubeObject,
    ObjectMeta,
    as_object,
    name_of,
    namespace_of,
    resource_version,
)

Key = tuple[str, str]  # namespace, name
Referenced = Callable[[str, str], bool]
OnChanged = Callable[[Key], None]


def _slim(body: KubeObject) -> KubeObject:
    return KubeObject(metadata=ObjectMeta(resourceVersion=resource_version(body)),
                      data=dict(body.get("data") or {}))


class KubeSecrets:
    def __init__(self, api: KubeApi, referenced: Referenced, *,
                 version_key: bytes | None = None) -> None:
        self.api = api
        self.version_key = version_key  # of the keyed hashes ("secret versions")
        self._referenced = referenced
        self._bodies: dict[Key, KubeObject] = {}
        # Keys of a kept body already decoded (base64, UTF-8, checks, keyed version): the
        # body they came from (a new body is a new object) and each key's Resolved.
        self._decoded: dict[Key, tuple[KubeObject, dict[str, Resolved]]] = {}
        self._missing: set[Key] = set()  # known not to exist (until a watch event)
        self._epoch: dict[Key, int] = {}  # bumped by every watch event for the key
        self._inflight: dict[Key, asyncio.Future[KubeObject | None]] = {}
        # key -> resourceVersion of the entry when the watch gap began ("" = missing)
        self._stale: dict[Key, str] = {}
        self.on_changed: OnChanged | None = None  # a stale entry was re-read: content differs
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._bodies)

    # --- the watch ----------------------------------------------------------------------
    def observe(self, body: KubeObject, event_type: str | None) -> bool:
        """A Secret watch event; True when a resource references that Secret."""
        key = (namespace_of(body), name_of(body))
        self._decoded.pop(key, None)
        if not self._referenced(*key):
            self._bodies.pop(key, None)
            self._missing.discard(key)
            return False
        self._epoch[key] = self._epoch.get(key, 0) + 1
        self._stale.pop(key, None)  # an event after the gap carries the current content
        if event_type == "DELETED":
            self._bodies.pop(key, None)
            self._missing.add(key)
        else:
            self._bodies[key] = _slim(body)
            self._missing.discard(key)
        return True

    def prune(self) -> None:
        """Drop entries no resource references any more."""
        for key in [k for k in self._bodies if not self._referenced(*k)]:
            del self._bodies[key]
            self._decoded.pop(key, None)
        self._missing = {k for k in self._missing if self._referenced(*k)}
        self._epoch = {k: v for k, v in self._epoch.items() if self._referenced(*k)}
        self._stale = {k: v for k, v in self._stale.items() if self._referenced(*k)}

    def mark_stale(self, namespace: str | None) -> None:
        """The Secret watch of ``namespace`` (None: every namespace) has a gap: changes may
        have been missed, so every kept entry there is re-read before its next use."""
        for key in [*self._bodies, *self._missing]:
            if (namespace is None or key[0] == namespace) and key not in self._stale:
                self._stale[key] = resource_version(self._bodies.get(key))

    @property
    def stale(self) -> int:
        return len(self._stale)

    async def resync(self) -> list[Key]:
        """After a watch gap: re-read every stale entry (changes go to ``on_changed``);
        the keys that could not be read (still stale: retry later)."""
        failed: list[Key] = []
        for key in list(self._stale):
            try:
                await self._fetch(key)
            except ApiError:
                if key in self._stale:
                    failed.append(key)
        return failed

    # --- reads --------------------------------------------------------------------------
    async def _fetch(self, key: Key) -> KubeObject | None:
        """GET by name (single-flight); stored unless a watch event arrived meanwhile."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[KubeObject | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        epoch = self._epoch.get(key, 0)
        try:
            try:
                body: KubeObject | None = _slim(as_object(
                    await self.api.get(resource_path("v1", "secrets", key[0], key[1]))))
            except NotFound:
                body = None
            if self._epoch.get(key, 0) == epoch and self._referenced(*key):
                self._decoded.pop(key, None)
                if body is None:
                    self._bodies.pop(key, None)
                    self._missing.add(key)
                else:
                    self._bodies[key] = body
                    self._missing.discard(key)
                was = self._stale.pop(key, None)
                if was is not None and was != resource_version(body) and \
                        self.on_changed is not None:  # equality only: versions are opaque
                    self.on_changed(key)
            fut.set_result(body)
            return body
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._inflight[key]

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved:
        sel = ref.secret_key_ref
        if sel is None:  # pragma: no cover - the router only sends secretKeyRefs here
            raise CredentialError("InvalidSpec", f"{ref.describe()} is not a secretKeyRef")
        key = (namespace, sel.name)
        where = f"Secret {sel.name!r} in namespace {namespace!r}"
        body = self._bodies.get(key)
        if key not in self._stale and (body is not None or key in self._missing):
            self.hits += 1
        else:  # never read, or stale after a watch gap (it may be out of date)
            self.misses += 1
            try:
                body = await self._fetch(key)
            except (Unauthorized, Forbidden) as exc:
                raise CredentialError("SecretAccessDenied", f"the operator may not read {where} "
                                      f"(HTTP {exc.code} from the Kubernetes API)") from None
            except ApiError as exc:
                raise CredentialError("SecretSourceUnavailable",
                                      f"the Kubernetes API could not be read for {where} "
                                      f"({exc.code or ''} {exc.reason})".replace("( ", "("),
                                      ) from None
        if body is None:
            raise CredentialError("SecretNotFound", f"{where} does not exist")
        # Every pass resolves its Secrets: decode each key of a kept body once (a CA
        # bundle can be 200 KB: base64, UTF-8, checks and a keyed hash on every pass).
        decoded = self._decoded.get(key)
        if decoded is None or decoded[0] is not body:
            decoded = self._decoded[key] = (body, {})
        got = decoded[1].get(sel.key)
        if got is None:
            got = decoded[1][sel.key] = resolve_from_secret(
                cast(dict[str, Any], body), sel, namespace, version_key=self.version_key)
        return got

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        """Merge-patch one key (creating the Secret when missing): a rotated refresh token."""
        sel = ref.secret_key_ref
        if sel is None:  # pragma: no cover
            raise CredentialError("RefreshTokenNotPersisted", f"{ref.describe()} is read-only")
        encoded = base64.b64encode(value.reveal().encode("utf-8")).decode("ascii")
        path = resource_path("v1", "secrets", namespace, sel.name)
        try:
            try:
                doc = await self.api.patch(path, {"data": {sel.key: encoded}})
            except NotFound:
                doc = await self.api.post(resource_path("v1", "secrets", namespace), {
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": sel.name, "namespace": namespace},
                    "data": {sel.key: encoded}})
        except ApiError as exc:
            raise CredentialError("RefreshTokenNotPersisted",
                                  f"cannot write Secret {sel.name!r} in namespace "
                                  f"{namespace!r} (HTTP {exc.code} {exc.reason})") from None
        self.observe(as_object(doc), "MODIFIED")
        return resolve_from_secret(doc, sel, namespace, version_key=self.version_key).version
